"""A real JupyterHub for the tests: system users, a hub, its proxy, user servers.

What runs (all on 127.0.0.1, each on a free port):
  - JupyterHub (`jupyterhub` from the test extra, in the Python running the
    tests, as root), with its sqlite db, cookie secret, config and log in a
    private folder; LocalProcessSpawner; SharedPasswordAuthenticator limited
    to the test's users; `cleanup_servers = True`.
  - configurable-http-proxy (npm; scripts/setup.sh installs it), started and
    stopped by the hub.
  - One `jupyterhub-singleuser` per user whose server a test starts, running
    as that user (setuid by the spawner) from the USERS' PYTHON (below).
  - Two (or more) real system users `awfh<hex>` made with `useradd -m`: home
    0700, own group only (never `docker`); `userdel -r` at teardown.

The users' Python. The tests' Python lives under /root (mode 0700 here), which
other users cannot even traverse, so the users' servers cannot run it. They
run a venv of Debian's /usr/bin/python3 kept at /opt/awf-kernel-test/hub-python
(override: AWF_TEST_HUB_PYTHON; base interpreter: AWF_TEST_HUB_BASE_PYTHON),
root-owned and read-only for everyone else, holding jupyterhub, jupyter_server,
ipykernel, jupyter_client and the project's runtime dependencies PINNED to the
versions installed in the tests' Python. It is built on first use (pip, a
minute) and rebuilt when a pin changes. `UsersPython.install_project(dest)`
puts the awf_kernel of this tree into a folder for the users' PYTHONPATH (with
its entry points), for tests whose user servers need the provisioner.

Everything a hub starts carries AWF_TEST_HUB_RUN=<token> in its environment
(the proxy by inheritance, user servers and managed services through the
config), so teardown finds and ends exactly these processes by pid, also
after a crash: a later run removes the users, processes and folders of runs
whose owning pytest process is gone (`clean_stale`).

Typical use (see conftest.py for the fixtures):

    hub = start_hub(services=[{"name": "awf-broker", "command": [...]}],
                    environment={"X": "1"}, jupyter_path=[...])
    alice, bob = hub.users
    srv = hub.start_server(alice)             # POST /hub/api/users/NAME/server, wait ready
    s = srv.start_session("x.ipynb", "python3")  # POST /user/NAME/api/sessions
    with srv.kernel(s["kernel"]["id"]) as k:  # websocket /user/NAME/api/kernels/ID/channels
        k.execute("import os; print(os.getuid())")["stdout"]
    hub.run_as(alice, "id", "-u")             # runuser -u NAME -- id -u
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import requests
import websocket

REPO = Path(__file__).resolve().parents[2]
USER_PREFIX = "awfh"
RUN_PREFIX = "awfhub-"
RUN_ENV = "AWF_TEST_HUB_RUN"
OWNER_TAG = "awf-kernel test hub"
HUB_PYTHON = Path(os.environ.get("AWF_TEST_HUB_PYTHON", "/opt/awf-kernel-test/hub-python"))
BASE_PYTHON = os.environ.get("AWF_TEST_HUB_BASE_PYTHON", "/usr/bin/python3")
# What the users' servers need, pinned to the tests' own versions (plus the
# project's runtime dependencies, so a user server can load the provisioner).
USERS_PACKAGES = ("jupyterhub", "jupyter_server", "ipykernel", "jupyter_client")
BUILD_PACKAGES = ("setuptools>=64", "wheel")  # install_project builds the project without isolation
READY_TIMEOUT = 90.0
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def _require(ok: bool, msg: str):
    if ok:
        return
    from tests.conftest import in_ci
    if in_ci():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def require_hub_host():
    """Root (useradd, setuid spawner), the proxy, runuser: fail in CI, skip elsewhere."""
    _require(os.geteuid() == 0, "the hub tests create system users: run them as root")
    _require(shutil.which("configurable-http-proxy") is not None,
             "configurable-http-proxy is missing: run scripts/setup.sh "
             "(npm install -g configurable-http-proxy)")
    for tool in ("useradd", "userdel", "runuser"):
        _require(shutil.which(tool) is not None, f"{tool} is missing")
    _require(os.access(BASE_PYTHON, os.X_OK), f"{BASE_PYTHON} (the users' base Python) is missing: "
             "apt-get install python3 python3-venv, or set AWF_TEST_HUB_BASE_PYTHON")


# --- owners: which pytest process a resource belongs to ------------------------------------

def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag() -> str:
    return f"{OWNER_TAG} pid={os.getpid()} start={_start_time(os.getpid())}"


def owner_alive(tag: str) -> bool:
    m = re.search(r"pid=(\d+) start=(\d+)", tag or "")
    return bool(m) and _start_time(int(m.group(1))) == m.group(2)


# --- processes ---------------------------------------------------------------------------------

def _proc_ids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _proc_env_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_processes(token: str, uids: set[int] = frozenset()) -> dict[int, str]:
    """The live processes of one hub run: those carrying its marker in their
    environment and those of its users. pid -> command line."""
    needle = f"{RUN_ENV}={token}".encode()
    me = os.getpid()
    found = {}
    for pid in _proc_ids():
        if pid == me:
            continue
        # a zombie is dead already: only its reaper can clear it
        if (_proc_uid(pid) in uids or _proc_env_has(pid, needle)) and not _is_zombie(pid):
            found[pid] = _cmdline(pid)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def end_processes(pids, grace: float = 5.0) -> None:
    """SIGTERM these pids, SIGKILL what is left after `grace` seconds."""
    starts = {pid: _start_time(pid) for pid in pids}

    def alive():
        return [p for p, st in starts.items() if st is not None and _start_time(p) == st and not _is_zombie(p)]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


def _term_with_parent():
    """preexec_fn: SIGTERM this child when the test process dies (a killed
    pytest then still gets a clean hub shutdown; clean_stale does the rest)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# --- the users' Python ---------------------------------------------------------------------------

def _pins() -> list[str]:
    import tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = list(USERS_PACKAGES)
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
        if name.lower().replace("-", "_") not in {n.lower().replace("-", "_") for n in names}:
            names.append(name)
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return sorted(pins, key=str.lower) + list(BUILD_PACKAGES)


@dataclass
class UsersPython:
    """The venv the users' servers (and `run_as` commands) run."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    @property
    def path(self) -> str:
        """PATH for the users: this venv first, then the system's."""
        return f"{self.bin}:{SYSTEM_PATH}"

    def install_project(self, dest: Path) -> Path:
        """Install this tree's awf_kernel (no dependencies: the venv has them)
        into `dest`, for the users' PYTHONPATH; `dest` is made world-readable."""
        dest = Path(dest)
        build = Path(tempfile.mkdtemp(prefix="awfh-build-"))
        try:
            src = build / "src"  # a copy: the build writes build/ and *.egg-info next to its sources
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            src.mkdir()
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(REPO / name, src / name)
            for name in ("awf_kernel", "containers", "jupyter-config"):
                shutil.copytree(REPO / name, src / name, symlinks=True, ignore=ignore)
            (src / "labextension").mkdir()  # the wheel's data files (pyproject.toml) name this one too
            shutil.copy2(REPO / "labextension" / "install.json", src / "labextension" / "install.json")
            res = subprocess.run([self.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                  "--no-compile", "--disable-pip-version-check", "--target", str(dest), str(src)],
                                 check=False, capture_output=True, text=True, timeout=300,
                                 cwd=build, env={**_pip_env(), "TMPDIR": str(build)})
            if res.returncode != 0:
                raise RuntimeError(f"installing awf_kernel for the users failed:\n{res.stdout}\n{res.stderr}")
        finally:
            shutil.rmtree(build, ignore_errors=True)
        _world_readable(dest)
        return dest


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("LANG", "HOME")}
    env["PATH"] = SYSTEM_PATH
    return env


def _world_readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "u+rwX,go+rX,go-w", str(path)], check=True)
    p = Path(path)
    while p != p.parent:  # every folder on the way must be traversable
        p = p.parent
        if p.stat().st_mode & 0o005 != 0o005:
            raise RuntimeError(f"{p} is not traversable by other users (mode {oct(p.stat().st_mode)})")


def ensure_users_python(root: Path = HUB_PYTHON, base: str = BASE_PYTHON) -> UsersPython:
    """Build (once, under a lock) the users' venv; rebuild it when a pin changed."""
    want = {"base": os.path.realpath(base),
            "version": subprocess.run([base, "-c", "import sys; print(sys.version)"], check=True,
                                      capture_output=True, text=True).stdout.strip(),
            "pins": _pins()}
    stamp = root / "awf-test-stamp.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(root.parent, 0o755)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if json.loads(stamp.read_text()) == want:
                return UsersPython(root)
        except (OSError, ValueError):
            pass
        shutil.rmtree(root, ignore_errors=True)
        try:
            subprocess.run([base, "-m", "venv", str(root)], check=True, capture_output=True, text=True)
            res = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q",
                                  "--disable-pip-version-check", *want["pins"]],
                                 check=False, capture_output=True, text=True, timeout=900, env=_pip_env(),
                                 cwd=root)
            if res.returncode != 0:
                raise RuntimeError(f"building the users' Python failed:\n{res.stdout}\n{res.stderr}")
            _world_readable(root)
            stamp.write_text(json.dumps(want, indent=1))
            os.chmod(stamp, 0o644)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return UsersPython(root)


# --- system users -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SystemUser:
    name: str
    uid: int
    gid: int
    home: Path

    def __str__(self):
        return self.name

    @property
    def groups(self) -> list[str]:
        import grp
        return sorted(grp.getgrgid(g).gr_name for g in os.getgrouplist(self.name, self.gid))


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def create_user(tag: str) -> SystemUser:
    """A new system user `awfh<hex>`: home made by useradd (mode 0700), own group,
    login shell bash, the owner tag in its comment field."""
    name = f"{USER_PREFIX}{secrets.token_hex(4)}"
    _run("useradd", "-m", "-U", "-s", "/bin/bash", "-K", "HOME_MODE=0700", "-c", tag, name)
    pw = pwd.getpwnam(name)
    return SystemUser(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def remove_user(name: str) -> None:
    """End every process of the user (by pid), then `userdel -r`. Idempotent."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for _ in range(3):
        pids = [p for p in _proc_ids() if _proc_uid(p) == uid and p != os.getpid()]
        if not pids:
            break
        end_processes(pids, grace=2.0)
    res = _run("userdel", "-r", name, check=False)
    if res.returncode not in (0, 12):  # 12: home or mail spool could not be removed (absent)
        raise RuntimeError(f"userdel -r {name} failed ({res.returncode}): {res.stderr.strip()}")


def clean_stale() -> list[str]:
    """Remove what crashed runs left: their processes, users and folders.
    A run whose owning pytest process still lives is left alone."""
    removed = []
    tmp = Path(tempfile.gettempdir())
    for run_dir in tmp.glob(f"{RUN_PREFIX}*"):
        try:
            info = json.loads((run_dir / "owner.json").read_text())
        except (OSError, ValueError):
            info = None
        if info is None:
            if time.time() - run_dir.stat().st_mtime < 600:
                continue  # being set up right now, maybe
            info = {"owner": "", "token": run_dir.name[len(RUN_PREFIX):], "users": []}
        if owner_alive(info["owner"]):
            continue
        uids = set()
        for name in info.get("users", []):
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                pass
        end_processes(run_processes(info["token"], uids), grace=2.0)
        for name in info.get("users", []):
            remove_user(name)
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir.name)
    for pw in pwd.getpwall():  # users whose run folder is already gone
        if (re.fullmatch(f"{USER_PREFIX}[0-9a-f]{{8}}", pw.pw_name) and OWNER_TAG in pw.pw_gecos
                and not owner_alive(pw.pw_gecos)):
            remove_user(pw.pw_name)
            removed.append(pw.pw_name)
    return removed


# --- the hub -------------------------------------------------------------------------------------------

class HubError(RuntimeError):
    pass


def _py(value) -> str:
    """A Python literal for the config file."""
    return repr(value)


@dataclass
class Hub:
    """One JupyterHub with its users. Make it with `Hub.prepare(...)` (folders,
    users, ports; nothing runs), then `start()`; `stop()` ends everything."""

    users_python: UsersPython
    n_users: int = 2
    services: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    jupyter_path: list = field(default_factory=list)
    extra_config: str = ""
    roles: list = field(default_factory=list)
    log_level: str = "INFO"
    settle: float = 10.0  # seconds stop() lets processes exit by themselves after the hub

    token: str = field(default_factory=lambda: secrets.token_hex(4))
    users: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _clients: dict = field(default_factory=dict)
    _stopped: bool = False

    # -- layout
    @property
    def run_dir(self) -> Path:
        """Root-owned, world-readable: `shared` is for what the users must read."""
        return Path(tempfile.gettempdir()) / f"{RUN_PREFIX}{self.token}"

    @property
    def private(self) -> Path:
        """Root only (0700): config, db, cookie secret, logs, tokens."""
        return self.run_dir / "private"

    @property
    def shared(self) -> Path:
        """Readable (not writable) by the users: kernel specs, installed code."""
        return self.run_dir / "shared"

    @property
    def kernels_dir(self) -> Path:
        """`<shared>/jupyter/kernels`: on the users' JUPYTER_PATH. Put a kernel
        spec folder (with kernel.json) here, or install into prefix `shared_prefix`."""
        return self.shared / "jupyter" / "kernels"

    @property
    def shared_prefix(self) -> Path:
        """A Jupyter prefix whose share/jupyter is on the users' JUPYTER_PATH:
        `kernelspec.install(prefix=str(hub.shared_prefix), ...)` works."""
        return self.shared / "prefix"

    @property
    def log_path(self) -> Path:
        return self.private / "hub.log"

    @property
    def url(self) -> str:
        """The public URL (the proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> Hub:
        clean_stale()
        self.run_dir.mkdir(mode=0o755)
        os.chmod(self.run_dir, 0o755)
        self._write_owner()
        self.private.mkdir(mode=0o700)
        self.kernels_dir.mkdir(parents=True)
        (self.shared_prefix / "share" / "jupyter" / "kernels").mkdir(parents=True)
        _world_readable(self.shared)
        self.port, self.api_port, self.hub_port = self._three_ports()
        self.admin_token = secrets.token_hex(32)
        self.password = secrets.token_urlsafe(16)
        tag = owner_tag()
        for _ in range(self.n_users):
            user = create_user(tag)
            self.users.append(user)
            self._write_owner()
        return self

    @staticmethod
    def _three_ports() -> tuple[int, int, int]:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        return tuple(ports)

    def _write_owner(self):
        path = self.run_dir / "owner.json"
        path.write_text(json.dumps({"owner": owner_tag(), "token": self.token,
                                    "users": [u.name for u in self.users]}))
        os.chmod(path, 0o644)

    def user_environment(self) -> dict:
        """The environment every user server gets (plus the test's `environment`)."""
        jupyter_path = [str(self.shared / "jupyter"), str(self.shared_prefix / "share" / "jupyter"),
                        *map(str, self.jupyter_path)]
        return {"PATH": self.users_python.path, "LANG": "C.UTF-8",
                "JUPYTER_PATH": os.pathsep.join(jupyter_path), RUN_ENV: self.token,
                **self.environment}

    def config_text(self) -> str:
        services = [{"name": "test-admin", "api_token": self.admin_token}]
        for svc in self.services:
            svc = dict(svc)
            if "command" in svc:  # managed: the hub runs it (as root unless "user"); mark it
                svc["environment"] = {"PATH": self._hub_path(), "LANG": "C.UTF-8",
                                      **svc.get("environment", {}), RUN_ENV: self.token}
            services.append(svc)
        roles = [{"name": "admin", "services": ["test-admin"]}, *self.roles]
        return textwrap.dedent(f"""\
            # written by tests/hub/hub_fixtures.py
            c = get_config()  # noqa
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
            c.ConfigurableHTTPProxy.auth_token = {_py(secrets.token_hex(32))}
            c.ConfigurableHTTPProxy.command = [{_py(shutil.which("configurable-http-proxy"))}]
            c.ConfigurableHTTPProxy.pid_file = {_py(str(self.private / "proxy.pid"))}
            c.JupyterHub.pid_file = {_py(str(self.private / "hub.pid"))}
            c.JupyterHub.db_url = {_py("sqlite:///" + str(self.private / "jupyterhub.sqlite"))}
            c.JupyterHub.cookie_secret_file = {_py(str(self.private / "cookie_secret"))}
            c.JupyterHub.cleanup_servers = True
            c.JupyterHub.cleanup_proxy = True
            c.JupyterHub.log_level = {_py(self.log_level)}
            c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
            c.JupyterHub.authenticator_class = "shared-password"
            c.SharedPasswordAuthenticator.user_password = {_py(self.password)}
            c.Authenticator.allowed_users = {_py({u.name for u in self.users})}
            c.JupyterHub.services = {_py(services)}
            c.JupyterHub.load_roles = {_py(roles)}
            c.Spawner.cmd = [{_py(str(self.users_python.bin / "jupyterhub-singleuser"))}]
            c.Spawner.env_keep = []
            c.Spawner.environment = {_py(self.user_environment())}
            c.Spawner.start_timeout = 120
            c.Spawner.http_timeout = 90
            c.Spawner.debug = {self.log_level == "DEBUG"}
            """) + "\n# extra config of the test\n" + textwrap.dedent(self.extra_config) + "\n"

    @staticmethod
    def _hub_path() -> str:
        """PATH of the hub and its managed services: the tests' Python first."""
        return f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/sbin:/sbin:{SYSTEM_PATH}"

    def start(self, timeout: float = READY_TIMEOUT) -> Hub:
        (self.private / "jupyterhub_config.py").write_text(self.config_text())
        env = {"PATH": self._hub_path(), "LANG": "C.UTF-8",
               "HOME": str(self.private), RUN_ENV: self.token}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.private / "jupyterhub_config.py")],
                cwd=self.private, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_term_with_parent)  # noqa: PLW1509 - before threads matter
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HubError(f"the hub exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            if port_open(self.hub_port):  # before that, the proxy answers 404
                try:
                    if self.api("GET", "/users", timeout=5).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
            if time.monotonic() > deadline:
                raise HubError(f"the hub did not answer in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- the hub's REST API
    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        """/hub/api<path> through the proxy, as the admin service unless `token`."""
        kw.setdefault("timeout", 30)
        with requests.Session() as s:
            s.trust_env = False  # no proxy variables: loopback only
            return s.request(method, f"{self.url}/hub/api{path}",
                             headers={"Authorization": f"token {token or self.admin_token}"}, **kw)

    def _ok(self, r: requests.Response, *codes: int) -> requests.Response:
        if r.status_code not in (codes or (200,)):
            raise HubError(f"{r.request.method} {r.url}: {r.status_code} {r.text[:500]}\n{self.log_tail(30)}")
        return r

    def user_model(self, user) -> dict:
        return self._ok(self.api("GET", f"/users/{user}")).json()

    def user_token(self, user, **body) -> str:
        """A new API token of `user` (POST /hub/api/users/NAME/tokens)."""
        body.setdefault("note", "awf-kernel hub test")
        body.setdefault("expires_in", 3600)
        return self._ok(self.api("POST", f"/users/{user}/tokens", json=body), 200, 201).json()["token"]

    def start_server(self, user, timeout: float = 120) -> UserServer:
        """POST /hub/api/users/NAME/server, wait until the hub says it is ready;
        returns a client for it holding a fresh token of the user."""
        return self.start_servers(user, timeout=timeout)[0]

    def start_servers(self, *users, timeout: float = 120) -> list[UserServer]:
        """start_server for several users at once (the spawns overlap)."""
        for user in users:
            r = self.api("POST", f"/users/{user}/server")
            if not (r.status_code == 400 and "already running" in r.text):
                self._ok(r, 201, 202)
        start = time.monotonic()
        waiting = [str(u) for u in users]
        while waiting:
            for name in list(waiting):
                server = self.user_model(name).get("servers", {}).get("")
                if server and server.get("ready"):
                    waiting.remove(name)
                elif server is None and time.monotonic() - start > 2:
                    # neither pending nor ready: the spawn failed
                    raise HubError(f"{name}'s server is gone (spawn failed):\n{self.log_tail()}")
            if waiting and time.monotonic() - start > timeout:
                raise HubError(f"servers of {waiting} not ready in {timeout:.0f}s\n{self.log_tail()}")
            if waiting:
                time.sleep(0.3)
        clients = []
        for user in users:
            user = user if isinstance(user, SystemUser) else self.user(user)
            client = UserServer(self, user, self.user_token(user))
            self._clients[user.name] = client
            clients.append(client)
        return clients

    def stop_server(self, user, timeout: float = 60) -> None:
        self._ok(self.api("DELETE", f"/users/{user}/server"), 202, 204, 400)
        deadline = time.monotonic() + timeout
        while self.user_model(user).get("servers", {}).get(""):
            if time.monotonic() > deadline:
                raise HubError(f"{user}'s server did not stop in {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.3)

    def user(self, name: str) -> SystemUser:
        return next(u for u in self.users if u.name == name)

    # -- the users' side
    def user_env(self, user: SystemUser, **extra) -> dict:
        return {"HOME": str(user.home), "USER": user.name, "LOGNAME": user.name, "SHELL": "/bin/bash",
                "PATH": self.users_python.path, "LANG": "C.UTF-8", RUN_ENV: self.token, **extra}

    def run_as(self, user: SystemUser, *cmd: str, input: str | None = None, timeout: float = 60,
               env: dict | None = None, cwd: str | None = None, check: bool = False
               ) -> subprocess.CompletedProcess:
        """Run a command as the user, from their home, the way their own shell
        would (`runuser -u NAME -- cmd`): their uid, gid and groups, the users'
        Python first on PATH, no other privileges."""
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return subprocess.run([runuser, "-u", user.name, "--", *cmd], input=input, text=True,
                              capture_output=True, timeout=timeout, check=check,
                              cwd=cwd or user.home, env=self.user_env(user, **(env or {})))

    def shell(self, user: SystemUser, script: str, **kw) -> subprocess.CompletedProcess:
        """`run_as(user, "bash", "-c", script)`."""
        return self.run_as(user, "bash", "-c", script, **kw)

    def write_file(self, user: SystemUser, relpath: str, content: str | bytes, mode: int = 0o644) -> Path:
        """A file in the user's home, owned by the user (folders made as needed)."""
        path = user.home / relpath
        rel_parts = Path(relpath).parent.parts
        d = user.home
        for part in rel_parts:
            d = d / part
            if not d.exists():
                d.mkdir(mode=0o755)
                os.chown(d, user.uid, user.gid)
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchown(fd, user.uid, user.gid)
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def write_notebook(self, user: SystemUser, relpath: str, cells: list[str] = (),
                       metadata: dict | None = None, trusted: bool = True) -> Path:
        """A notebook of the user's; `trusted`: signed by the user (`jupyter
        trust`, run as them), as a notebook they wrote themselves is, so its
        `metadata.awf` applies (awf_kernel.trust)."""
        import nbformat
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                      metadata=metadata or {})
        path = self.write_file(user, relpath, nbformat.writes(nb))
        if trusted:
            done = self.run_as(user, str(self.users_python.bin / "jupyter"), "trust", str(path))
            if done.returncode != 0:
                raise HubError(f"jupyter trust {path} as {user.name} failed: {done.stderr}")
        return path

    # -- teardown
    def processes(self) -> dict[int, str]:
        """Live processes of this hub: the hub, its proxy, user servers, kernels,
        managed services, anything run as its users."""
        found = run_processes(self.token, {u.uid for u in self.users})
        if self.proc is not None and self.proc.poll() is None:
            found[self.proc.pid] = _cmdline(self.proc.pid)
        return found

    def listening_ports(self) -> list[int]:
        return [p for p in (self.port, self.api_port, self.hub_port) if port_open(p)]

    def stop(self, timeout: float = 60) -> None:
        """Stop the hub the way an admin does (SIGTERM: it stops the user servers,
        as cleanup_servers says, and its proxy), then end anything left by pid.
        Raises HubError if the hub did not exit by itself in `timeout`."""
        if self._stopped:
            return
        self._stopped = True
        for client in self._clients.values():
            client.close()
        problem = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problem = f"the hub did not exit {timeout:.0f}s after SIGTERM"
                self.proc.kill()
                self.proc.wait(timeout=10)
        # What the hub signalled may still be exiting: kernels, for one, notice
        # their server is gone within a few seconds (the user servers stop on
        # SIGINT without shutting their kernels down first).
        deadline = time.monotonic() + (self.settle if problem is None else 0)
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        end_processes(left)
        self.leftover_processes = left
        if problem:
            raise HubError(f"{problem}:\n{self.log_tail()}")

    def remove(self) -> None:
        """stop(), then remove the users and the folders. Idempotent."""
        try:
            self.stop()
        finally:
            for user in self.users:
                remove_user(user.name)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What is still there after remove(): processes, listening ports, users, folders."""
        found = [f"process {pid}: {cmd}" for pid, cmd in
                 run_processes(self.token, {u.uid for u in self.users}).items()]
        found += [f"port {p} still listening" for p in self.listening_ports()]
        for user in self.users:
            try:
                pwd.getpwnam(user.name)
                found.append(f"user {user.name}")
            except KeyError:
                pass
            if user.home.exists():
                found.append(f"home {user.home}")
        if self.run_dir.exists():
            found.append(f"folder {self.run_dir}")
        return found


# --- the users' servers --------------------------------------------------------------------------

class UserServer:
    """A user's server reached through the hub's proxy with the user's token."""

    def __init__(self, hub: Hub, user: SystemUser, token: str):
        self.hub, self.user, self.token = hub, user, token
        self.base = f"{hub.url}/user/{user.name}"
        self._http = requests.Session()
        self._http.trust_env = False
        self._http.headers["Authorization"] = f"token {token}"
        self._kernels: list[KernelChannels] = []

    def api(self, method: str, path: str, **kw) -> requests.Response:
        """/user/NAME/api<path>, e.g. api("GET", "/kernels")."""
        kw.setdefault("timeout", 60)
        return self._http.request(method, f"{self.base}/api{path}", **kw)

    def _ok(self, r, *codes):
        return self.hub._ok(r, *codes)

    def kernelspecs(self) -> dict:
        return self._ok(self.api("GET", "/kernelspecs")).json()

    def start_session(self, path: str, kernel_name: str = "python3", name: str | None = None,
                      timeout: float = 120) -> dict:
        """POST /api/sessions {path, type: notebook, kernel: {name}}: the server
        starts the kernel with JPY_SESSION_NAME = path. Returns the session model."""
        body = {"path": path, "name": name or Path(path).name, "type": "notebook",
                "kernel": {"name": kernel_name}}
        return self._ok(self.api("POST", "/sessions", json=body, timeout=timeout), 201).json()

    def start_kernel(self, kernel_name: str = "python3", path: str | None = None, timeout: float = 120) -> dict:
        """POST /api/kernels (no session, no notebook identity)."""
        body = {"name": kernel_name, **({"path": path} if path else {})}
        return self._ok(self.api("POST", "/kernels", json=body, timeout=timeout), 201).json()

    def delete_session(self, session_id: str) -> None:
        self._ok(self.api("DELETE", f"/sessions/{session_id}"), 204)

    def kernel(self, kernel_id: str, timeout: float = 60) -> KernelChannels:
        """The kernel's websocket (usable as a context manager), ready to execute."""
        k = KernelChannels(self, kernel_id)
        self._kernels.append(k)
        k.wait_ready(timeout)
        return k

    def execute(self, kernel_id: str, code: str, timeout: float = 60) -> dict:
        """One-shot: connect, run `code`, disconnect."""
        with self.kernel(kernel_id) as k:
            return k.execute(code, timeout)

    def close(self):
        for k in self._kernels:
            k.close()
        self._http.close()


class KernelChannels:
    """The Jupyter messaging protocol over the server's kernel websocket
    (legacy JSON framing: every message is one text frame with its `channel`)."""

    def __init__(self, server: UserServer, kernel_id: str):
        self.kernel_id = kernel_id
        self.session = uuid.uuid4().hex
        url = server.base.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(
            f"{url}?session_id={self.session}", header=[f"Authorization: token {server.token}"],
            timeout=30, suppress_origin=True, http_no_proxy=["127.0.0.1"])
        self.backlog: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with contextlib.suppress(Exception):  # closing an already broken socket
            self.ws.close()

    def send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "awf-test",
                       "session": self.session, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}))
        return msg_id

    def recv(self, timeout: float) -> dict:
        self.ws.settimeout(max(timeout, 0.01))
        return json.loads(self.ws.recv())

    def wait_ready(self, timeout: float = 60) -> dict:
        """kernel_info_request until answered (the kernel may still be starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = self.send("kernel_info_request", {})
            try_until = min(deadline, time.monotonic() + 5)
            while time.monotonic() < try_until:
                try:
                    msg = self.recv(try_until - time.monotonic())
                except websocket.WebSocketTimeoutException:
                    break
                if msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "kernel_info_reply":
                    return msg["content"]
        raise TimeoutError(f"kernel {self.kernel_id} did not answer kernel_info in {timeout:.0f}s")

    def execute(self, code: str, timeout: float = 60) -> dict:
        """Run `code`; collect until its execute_reply AND status idle. Returns
        {stdout, stderr, error, result, outputs, reply}; `error` is
        "EName: value" or None, `result` the text/plain of execute_result."""
        msg_id = self.send("execute_request", {
            "code": textwrap.dedent(code), "silent": False, "store_history": False,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
        out = {"stdout": "", "stderr": "", "error": None, "result": None, "outputs": [], "reply": None}
        idle = False
        deadline = time.monotonic() + timeout
        while out["reply"] is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply/idle in {timeout:.0f}s; so far: {out}")
            try:
                msg = self.recv(left)
            except websocket.WebSocketTimeoutException:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                self.backlog.append(msg)
                continue
            t, c = msg["msg_type"], msg["content"]
            if t == "execute_reply":
                out["reply"] = c
                if c.get("status") == "error" and out["error"] is None:
                    out["error"] = f"{c.get('ename')}: {c.get('evalue')}"
            elif t == "status":
                idle = c.get("execution_state") == "idle"
            elif t == "stream":
                out[c["name"]] += c["text"]
                out["outputs"].append(msg)
            elif t == "error":
                out["error"] = f"{c['ename']}: {c['evalue']}"
                out["outputs"].append(msg)
            elif t in ("execute_result", "display_data"):
                if t == "execute_result":
                    out["result"] = c.get("data", {}).get("text/plain")
                out["outputs"].append(msg)
        return out

    def probe(self, code: str, timeout: float = 60):
        """Run code whose last stdout line is JSON; return it parsed (fails on error)."""
        res = self.execute(code, timeout)
        assert res["error"] is None, f"{res['error']}\n{res['stderr']}"
        return json.loads(res["stdout"].strip().splitlines()[-1])


@contextmanager
def running_hub(users_python: UsersPython, **options):
    """A prepared AND started hub; everything removed afterwards, also on failure.
    options: n_users, services, environment, jupyter_path, extra_config, roles, log_level."""
    hub = Hub(users_python, **options)
    try:
        hub.prepare()
        hub.start()
        yield hub
    finally:
        hub.remove()
