"""Shared test setup: integration tests need a real Docker engine.

In CI (CI=true) a missing engine is a failure, never a skip: a security suite
that silently skips proves nothing.
"""

import os

# Imported here, at collection, though only the unit tests use it: otherwise
# hypothesis's pytest plugin imports it from the terminal summary, deep in
# pytest's stack, and on CPython 3.11.7 compiling it there fails ("SystemError:
# AST constructor recursion depth mismatch") after a run of integration tests
# alone, turning their pass into exit status 1.
import hypothesis  # noqa: F401
import pytest


def pytest_collection_modifyitems(config, items):
    # Unit tests first: they fail fast and need no engine.
    items.sort(key=lambda item: 0 if "/unit/" in str(item.fspath) else 1)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_docker():
    import docker

    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        msg = (f"Docker engine not reachable ({exc}). Start it with scripts/ensure-docker.sh "
               "(or Docker Desktop / systemctl start docker).")
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
