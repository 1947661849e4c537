"""A real JupyterLab (with Notebook 7) for the browser and REST tests.

`LabServer` runs `python -m jupyterlab` on loopback with its own root,
config, data and runtime folders, so nothing of the developer's Jupyter setup
(settings, notary database, kernels) is read or changed. Its kernels come from
JUPYTER_PATH: the test internet's `awf-python` spec (tests/integration's
`spec_dir`) and more specs this module installs. The awf-kernel server
extension is enabled in its config and the prebuilt lab extension is taken from
the repository's awf_kernel/labextension (as `pip install .` installs it),
so an editable install needs nothing more.

Nothing here reaches outside the machine: JupyterLab's news feed, update
check and PyPI extension manager are off, and the browser (chromium.py) only
ever talks to this server (on loopback, or on the host side of the browser's
own namespace, browser_netns.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = REPO / "awf_kernel" / "labextension"
TOKEN = "awf-lab-test-token"
LAB_CONFIG = {
    "ServerApp": {"open_browser": False, "allow_root": True,
                  "jpserver_extensions": {"awf_kernel.jupyterlab": True}},
    "IdentityProvider": {"token": TOKEN},
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
               "extension_manager": "readonly"},
    # Autosave would save a notebook at a moment the test did not choose.
}
# Plugins that would ask the user something (news) or reach the internet.
DISABLED_PLUGINS = {"@jupyterlab/apputils-extension:announcements": True}
USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class LabServer:
    def __init__(self, base: Path, jupyter_path: list[Path], ip: str = "127.0.0.1"):
        self.ip = ip
        self.base = base
        self.root = base / "root"
        self.config_dir = base / "config"
        self.data_dir = base / "data"
        self.runtime_dir = base / "runtime"
        self.extensions = base / "share" / "jupyter"
        self.jupyter_path = [self.extensions, *jupyter_path]
        self.port = free_port(ip)
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "lab.log"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def prepare(self) -> None:
        for d in (self.root, self.config_dir / "labconfig", self.data_dir, self.runtime_dir,
                  self.extensions / "labextensions"):
            d.mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(LAB_CONFIG))
        config["ServerApp"]["ip"] = self.ip
        # The browser's own namespace (browser_netns.py) is another address: the token still guards.
        config["ServerApp"]["allow_remote_access"] = self.ip != "127.0.0.1"
        (self.config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
        (self.config_dir / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": DISABLED_PLUGINS}))
        for name, settings in USER_SETTINGS.items():
            path = self.config_dir / "lab" / "user-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        link = self.extensions / "labextensions" / "awf-kernel"
        if not link.exists():
            link.symlink_to(BUILT_EXTENSION, target_is_directory=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "AWF_", "JPY_"))}
        env.update(JUPYTER_PATH=os.pathsep.join(map(str, self.jupyter_path)), JUPYTER_CONFIG_DIR=str(self.config_dir),
                   JUPYTER_DATA_DIR=str(self.data_dir), JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.base / "workspaces"), JUPYTER_PLATFORM_DIRS="1")
        return env

    def start(self, timeout: float = 90) -> None:
        self.prepare()
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", f"--port={self.port}", f"--ServerApp.root_dir={self.root}",
             "--ServerApp.port_retries=0"],
            env=self.env(), cwd=str(self.root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("/api/status")
                status, answer = self.api("/awf-kernel/api/policy?path=none.ipynb", check=False)
                if not (isinstance(answer, dict) and str(answer.get("message", "")).startswith("path:")):
                    raise RuntimeError("the awf-kernel server extension is not loaded:\n" + self.log())
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("JupyterLab did not start:\n" + self.log()) from None
                time.sleep(0.3)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def api(self, path: str, method: str = "GET", body=None, *, token: str | None = TOKEN, check: bool = True,
            raw: bytes | None = None, headers: dict | None = None):
        """JSON in and out. check=True: the parsed answer (raises on HTTP errors);
        check=False: (status, parsed answer or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token:
            hdrs["Authorization"] = f"token {token}"
        req = urllib.request.Request(self.url + path, method=method, data=data, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            if check:
                raise
            status, text = e.code, e.read().decode(errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return parsed if check else (status, parsed)

    def stop_kernels(self) -> None:
        try:
            for s in self.api("/api/sessions"):
                self.api(f"/api/sessions/{s['id']}", "DELETE")
            for k in self.api("/api/kernels"):
                self.api(f"/api/kernels/{k['id']}", "DELETE")
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.stop_kernels()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
