"""The default kernel image boots without needless work and keeps its debugger
(containers/kernel/Dockerfile; docs/performance.md, "The kernel's own boot")."""

from __future__ import annotations

import queue
import time

import pytest
from jupyter_client import BlockingKernelClient

from tests.integration.conftest import ALLOW

# Run as the kernel's first cell: what its boot imported, and any module of the
# image loaded from source (no .pyc in the read-only image: recompiled at every start).
BOOT_PROBE = """
import importlib.util, json, os, sys
uncached = sorted(m.__file__ for m in list(sys.modules.values())
                  if (getattr(m, "__file__", None) or "").startswith("/usr/") and m.__file__.endswith(".py")
                  and not os.path.exists(importlib.util.cache_from_source(m.__file__)))
print(json.dumps({"pkg_resources": "pkg_resources" in sys.modules, "uncached": uncached,
                  "debugpy": "debugpy" in sys.modules,
                  "pydevd_validation": os.environ.get("PYDEVD_DISABLE_FILE_VALIDATION")}))
"""


def test_boot_skips_pkg_resources_and_recompiles_nothing(start_kernel):
    k = start_kernel(policy={"allow_domains": ALLOW})
    got = k.probe(BOOT_PROBE)
    assert got["debugpy"], "ipykernel no longer loads debugpy at start: the image's boot figures changed"
    assert not got["pkg_resources"], "the kernel's start imported pkg_resources again (about 45 ms)"
    assert got["uncached"] == [], "modules of the read-only image without bytecode, compiled at every start"
    assert got["pydevd_validation"] == "1"


def _debug_request(k, command: str, arguments: dict, timeout: float = 30) -> dict:
    msg = k.kc.session.msg("debug_request", {"type": "request", "seq": int(time.monotonic() * 1000) % 10**6,
                                             "command": command, "arguments": arguments})
    k.kc.control_channel.send(msg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = k.kc.control_channel.get_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply["content"]
    pytest.fail(f"no debug_reply to {command!r} within {timeout} s")


def test_debugger_still_works(start_kernel):
    """ipykernel's debugger (debugpy and pydevd, whose plugin namespaces the image
    declares without pkg_resources) still initializes and attaches in the pod.
    The kernel spec does not advertise it (metadata `debugger: false`)."""
    k = start_kernel(policy={"allow_domains": ALLOW})
    init = _debug_request(k, "initialize", {"clientID": "awf-test", "clientName": "awf-test", "adapterID": "python",
                                            "pathFormat": "path", "linesStartAt1": True, "columnsStartAt1": True,
                                            "supportsVariableType": True, "supportsVariablePaging": True,
                                            "supportsRunInTerminalRequest": True, "locale": "en"})
    assert init.get("success") is True, init
    attach = _debug_request(k, "attach", {})
    assert attach.get("success") is True, attach
    assert _debug_request(k, "debugInfo", {}).get("success") is True
    assert k.run("print(6 * 7)")["stdout"].strip() == "42"
    _debug_request(k, "disconnect", {"restart": False, "terminateDebuggee": False})


def test_iopub_welcomes_every_new_subscriber(start_kernel):
    """The image's launcher gives Debian's ipykernel 6.17 the IOPub welcome of
    ipykernel 7 (JEP 65; containers/kernel/ipykernel_launcher.py): without it,
    jupyter_client waits 0.2 s at every start before it trusts IOPub. Each client
    that subscribes later (a second browser tab) gets one too."""
    k = start_kernel(policy={"allow_domains": ALLOW})
    for _ in range(2):
        # A client of its own (its own Session: one shared with k.kc would
        # refuse the second copy of every broadcast as a replayed signature).
        other = BlockingKernelClient()
        other.load_connection_info(k.km.get_connection_info())
        other.start_channels()
        try:
            msg = other.iopub_channel.get_msg(timeout=10)
        except queue.Empty:
            pytest.fail("a new IOPub subscriber got no message: the kernel does not welcome subscribers")
        finally:
            other.stop_channels()
        assert msg["msg_type"] == "iopub_welcome", msg
        assert msg["content"] == {"subscription": ""}, msg
    assert k.run("print(6 * 7)")["stdout"].strip() == "42"
