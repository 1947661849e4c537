"""Headless Chromium (Debian's package) driven by Playwright for Python.

Playwright cannot download its own browser here, so it drives
/usr/bin/chromium. The flags keep Chromium from calling home (component
updates, sync, background networking, QUIC), and every request the page makes
to anything but 127.0.0.1 is aborted before it leaves: the tests' only
network is JupyterLab's address and the test internet the kernels reach.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

import pytest

from tests.conftest import in_ci

CHROMIUM = os.environ.get("AWF_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
        "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--metrics-recording-only",
        "--no-default-browser-check", "--disable-features=OptimizationHints,MediaRouter,Translate"]


def require_browser():
    """Playwright and Chromium, or a skip (a failure in CI: scripts/setup.sh installs both)."""
    msg = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        msg = "Playwright for Python is missing: pip install -e '.[test]' (or scripts/setup.sh)"
    if msg is None and not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        msg = f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does)"
    if msg:
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def only(host: str):
    """A Playwright route handler letting requests to `host` (the test's
    JupyterLab) through and aborting every other one."""
    def route(r) -> None:
        url = r.request.url
        if url.startswith(("data:", "blob:", "about:")) or urlsplit(url).hostname == host:
            r.continue_()
        else:
            r.abort("blockedbyclient")
    return route
