"""A real Jupyter Server starts awf-python for a notebook session: the
notebook's metadata (found through JPY_SESSION_NAME, relative to the server's
root dir) decides the kernel's egress, as in JupyterLab."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest
from jupyter_client.blocking import BlockingKernelClient
from nbformat.v4 import new_notebook

from awf_kernel import trust

TOKEN = "awf-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port, path, method="GET", body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture
def server(tmp_path, spec_dir, monkeypatch):
    pytest.importorskip("jupyter_server")
    # The user's notebook trust (nbsignatures.db) lives in the data folder: the test's own,
    # shared by the server and this process (trust.trust signs as the user would).
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    os.chown(root / "sub", 1000, 1000) if os.getuid() == 0 else None
    port = _free_port()
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_PATH": str(spec_dir.parent), "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("AWF_POLICY", None)
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
                             f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}",
                             "--ServerApp.allow_root=True"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    deadline = time.time() + 60
    while True:
        try:
            _api(port, "/api/status")
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("jupyter_server did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.3)
    yield port, root, runtime
    for k in _api(port, "/api/kernels"):
        _api(port, f"/api/kernels/{k['id']}", "DELETE")
    proc.terminate()
    proc.wait(timeout=30)


def _client(runtime, kernel_id) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    # No heartbeat channel: without a manager the client's liveness is the
    # heartbeat's, which calls a kernel still starting (under load) dead after
    # a second; the server, not this client, knows whether it is alive.
    kc.start_channels(hb=False)
    kc.wait_for_ready(timeout=120)
    return kc


def _fetch(kc, url) -> str:
    out = []
    kc.execute_interactive(f"""
import requests
try:
    print(requests.get("{url}", timeout=10).status_code)
except Exception as e:
    print(type(e).__name__)
""", timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    return "".join(out).strip()


def test_session_kernel_gets_the_notebooks_metadata(server, testnet):
    port, root, runtime = server
    nb = new_notebook()
    nb.metadata["awf"] = {"allow_domains": ["other.test"]}
    nbformat.write(nb, str(root / "sub" / "analysis.ipynb"))
    trust.trust(str(root / "sub" / "analysis.ipynb"))  # the user's own notebook
    session = _api(port, "/api/sessions", "POST", {"path": "sub/analysis.ipynb", "type": "notebook",
                                                   "name": "analysis.ipynb", "kernel": {"name": "awf-python"}})
    kid = session["kernel"]["id"]
    kc = _client(runtime, kid)
    try:
        mark = testnet.mark()
        assert _fetch(kc, "http://other.test/") == "200"
        assert _fetch(kc, "http://allowed.test/") == "403"  # declared nowhere
        assert testnet.web_hits("allowed.test", since=mark) == []
        # edit the metadata on disk, restart through the server: the new policy applies
        nb.metadata["awf"] = {"allow_domains": ["allowed.test"]}
        nbformat.write(nb, str(root / "sub" / "analysis.ipynb"))
        trust.trust(str(root / "sub" / "analysis.ipynb"))
        kc.stop_channels()
        _api(port, f"/api/kernels/{kid}/restart", "POST", {})
        kc = _client(runtime, kid)
        assert _fetch(kc, "http://allowed.test/") == "200"
        assert _fetch(kc, "http://other.test/") == "403"
        # replaced by a copy from elsewhere (content never signed): only the admin policy until the user trusts it
        nb.metadata["awf"] = {"allow_domains": ["other.test"], "block_domains": ["blocked.test"]}
        nbformat.write(nb, str(root / "sub" / "analysis.ipynb"))
        kc.stop_channels()
        _api(port, f"/api/kernels/{kid}/restart", "POST", {})
        kc = _client(runtime, kid)
        mark = testnet.mark()
        assert _fetch(kc, "http://other.test/") == "403"
        assert testnet.web_hits("other.test", since=mark) == []
    finally:
        kc.stop_channels()


def test_console_without_notebook_gets_admin_policy_only(server, testnet):
    port, root, runtime = server
    session = _api(port, "/api/sessions", "POST", {"path": "console-1", "type": "console", "name": "",
                                                   "kernel": {"name": "awf-python"}})
    kc = _client(runtime, session["kernel"]["id"])
    try:
        assert _fetch(kc, "http://other.test/") == "403"
    finally:
        kc.stop_channels()
