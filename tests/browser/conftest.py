"""Fixtures for the JupyterLab tests: a real JupyterLab server with the
awf-kernel extensions and kernel specs pointing at the test internet, and
headless Chromium driving it (see lab_fixtures.py and chromium.py).

    lab_specs  (session) kernel specs beyond tests/integration's awf-python:
                         awf-ceiling (a domain_ceiling and an admin block list)
    lab        (session) the running LabServer; kernels are stopped after each test
    browser_net (session) the browser's own network namespace (browser_netns.py)
    browser    (session) Playwright's Chromium, in that namespace
    page       a fresh browser page logged in to `lab`
"""

from __future__ import annotations

import json

import pytest

from awf_kernel import kernelspec
from tests.browser import browser_netns
from tests.browser.chromium import ARGS, CHROMIUM, only, require_browser
from tests.browser.helpers import goto
from tests.browser.lab_fixtures import TOKEN, LabServer
# The engine, the images and the test internet: the same session fixtures as tests/integration's.
from tests.integration.conftest import awf_images, docker_client, spec_dir  # noqa: F401
from tests.integration.testnet_fixtures import testnet  # noqa: F401

CEILING = ["allowed.test", "*.allowed.test", "other.test"]
ADMIN_BLOCK = ["other.test"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/browser/" in str(item.fspath) and "docker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def lab_specs(tmp_path_factory, spec_dir):
    """A prefix with more kernel specs: the test internet's settings plus admin bounds."""
    prefix = tmp_path_factory.mktemp("lab-specs")
    with open(spec_dir / kernelspec.KERNEL_NAME / "kernel.json") as f:
        base = json.load(f)["metadata"]["kernel_provisioner"]["config"]
    kernelspec.install(prefix=str(prefix), name="awf-ceiling", display_name="Python (AWF sandboxed: ceiling)",
                       settings={**base, "domain_ceiling": CEILING, "block_domains": ADMIN_BLOCK})
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="session")
def browser_net():
    """The browser's own network namespace (see browser_netns.py), or None
    (not root, no iproute2: the browser shares the host's, and may see
    net::ERR_NETWORK_CHANGED when pods start)."""
    if not browser_netns.available():
        yield None
        return
    with browser_netns.browser_net() as net:
        yield net


@pytest.fixture(scope="session")
def lab(tmp_path_factory, spec_dir, lab_specs, browser_net):
    server = LabServer(tmp_path_factory.mktemp("lab"), [lab_specs, spec_dir.parent],
                       ip=browser_net.host_ip if browser_net else "127.0.0.1")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _stop_lab_kernels(request):
    """Each test's kernels end with it (the server lives for the session)."""
    yield
    if "lab" in request.fixturenames:
        request.getfixturevalue("lab").stop_kernels()


# package scope: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and later suites call asyncio.run().
@pytest.fixture(scope="package")
def browser(browser_net, tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM
    if browser_net is not None:
        executable = browser_net.wrap(CHROMIUM, tmp_path_factory.mktemp("chromium"))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.route("**/*", only(lab.ip))
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    goto(pg, f"{lab.url}/lab?token={TOKEN}")  # logs in (cookie) once
    yield pg
    context.close()
