"""Fixtures for tests against a real JupyterHub (see hub_fixtures.py).

    users_python  (session)  the venv the users' servers run, built once
    make_hub      factory: make_hub(**options) -> a prepared Hub (users made,
                  folders and ports chosen, nothing running); call .start()
    start_hub     factory: start_hub(**options) -> a started Hub
    hub           start_hub() with two users and no extras

options: n_users=2, services=[{...}] (appended to c.JupyterHub.services; a
managed one has "command"), environment={...} (added to c.Spawner.environment),
jupyter_path=[dirs] (added to the users' JUPYTER_PATH; must be readable by
them), extra_config="c.X.y = ..." (appended to jupyterhub_config.py),
roles=[{...}] (c.JupyterHub.load_roles), log_level="INFO".

Also here for the hub-mode tests: docker_client, awf_images (the sandbox
images) and testnet (the test internet), from tests/integration.

Every hub is stopped and its users, processes and folders removed at
teardown, which fails if anything is left.
"""

from __future__ import annotations

import pytest

from tests.hub.hub_fixtures import (
    Hub,
    clean_stale,
    ensure_users_python,
    require_hub_host,
)
# The engine, the images and the test internet, for the hub-mode tests
# (test_hub_broker.py): the same session fixtures as tests/integration's.
from tests.integration.conftest import awf_images, docker_client  # noqa: F401
from tests.integration.testnet_fixtures import testnet  # noqa: F401


@pytest.fixture(scope="session")
def users_python():
    require_hub_host()
    clean_stale()
    return ensure_users_python()


@pytest.fixture
def make_hub(users_python):
    hubs: list[Hub] = []

    def make(**options) -> Hub:
        hub = Hub(users_python, **options)
        hubs.append(hub)
        hub.prepare()
        return hub

    yield make
    errors = []
    for hub in reversed(hubs):
        try:
            hub.remove()
        except Exception as exc:  # noqa: BLE001 - remove the others, report all
            errors.append(f"{exc}")
        left = hub.leftovers()
        if left:
            errors.append(f"hub {hub.token} left: {left}")
    if errors:
        pytest.fail("hub teardown: " + "\n".join(errors), pytrace=False)


@pytest.fixture
def start_hub(make_hub):
    def start(**options) -> Hub:
        return make_hub(**options).start()
    return start


@pytest.fixture
def hub(start_hub):
    return start_hub()
