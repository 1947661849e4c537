"""pytest plugin (entry point `pytest11: awf`): nbval runs each notebook under
its own `metadata.awf` policy.

nbval starts a kernel per notebook with no notebook identity and the
process's environment, so before nbval's collector starts a notebook's kernel
this plugin names the notebook in `JPY_SESSION_NAME`, exactly as Jupyter
Server does; the provisioner then reads that notebook's `metadata.awf`. An
`AWF_POLICY` the caller set explicitly still wins, as everywhere.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import pytest

from . import audit, policy_source

KERNEL_PREFIX = "awf"


def _is_awf_kernel(name: str | None) -> bool:
    return name is not None and name.startswith(KERNEL_PREFIX)


def _nbval_file(item):
    parent = getattr(item, "parent", None)
    if parent is not None and type(parent).__name__ == "IPyNbFile" and hasattr(parent, "nb"):
        return parent
    return None


def _wants_sandbox(nb) -> bool:
    meta = nb.metadata if nb is not None else {}
    return "awf" in meta or _is_awf_kernel(meta.get("kernelspec", {}).get("name"))


def pytest_addoption(parser):
    group = parser.getgroup("awf-kernel")
    group.addoption("--awf-fail-on-denied", action="store_true", default=False,
                    help="fail a notebook cell whose run was denied egress to any host (egress drift)")


def pytest_configure(config):
    opt = config.option
    if getattr(opt, "nbval_current_env", False) and _is_awf_kernel(getattr(opt, "nbval_kernel_name", None)):
        raise pytest.UsageError(
            "awf-kernel: --nbval-current-env runs notebooks in this Python process's environment, "
            "outside the sandbox. Drop it and use --nbval-kernel-name awf-python.")


def pytest_collection_modifyitems(session, config, items):
    if not getattr(config.option, "nbval_current_env", False):
        return
    for item in items:
        nbfile = _nbval_file(item)
        if nbfile is not None and _wants_sandbox(nbfile.nb):
            raise pytest.UsageError(
                f"awf-kernel: {nbfile.fspath} declares a sandbox (metadata.awf or the awf-python kernel), "
                "but --nbval-current-env would run it unsandboxed. Drop --nbval-current-env.")


@contextmanager
def _launch_env(nbfile):
    """JPY_SESSION_NAME names this notebook, only while its kernel starts;
    AWF_NOTEBOOK_CONSENT says the launcher runs it on purpose (pytest was
    asked to test this file), so its metadata.awf applies without Jupyter's
    notebook trust (awf_kernel.trust)."""
    values = {policy_source.SESSION_ENV: os.path.abspath(str(nbfile.fspath)), policy_source.CONSENT_ENV: "1"}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    nbfile = _nbval_file(item)
    if nbfile is None or getattr(nbfile, "kernel", None) is not None:
        yield
        return
    with _launch_env(nbfile):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    item._awf_started = time.time()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "call" or not item.config.getoption("awf_fail_on_denied"):
        return
    report = outcome.get_result()
    nbfile = _nbval_file(item)
    km = getattr(getattr(nbfile, "kernel", None), "km", None)
    prov = getattr(km, "provisioner", None)
    if report.failed or prov is None or not hasattr(prov, "audit_dir"):
        return
    time.sleep(0.1)  # the proxy writes a denied transaction's line as it closes
    started = getattr(item, "_awf_started", 0) - 0.5
    denied = sorted({(audit.display_host(r), r["reason"]) for r in audit.records(prov.audit_dir, km.kernel_id)
                     if r["decision"] == "denied" and r["time"] >= started})
    if denied:
        report.outcome = "failed"
        report.longrepr = ("awf-kernel: this cell was denied egress (the notebook needs more than it declares):\n"
                           + "\n".join(f"  {host}: {reason}" for host, reason in denied)
                           + "\nDeclare them in the notebook's metadata.awf.allow_domains, or remove the calls.")
