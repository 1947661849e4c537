"""`awf-kernel broker` against the real engine, with real users.

The broker runs as a subprocess (root) on a socket of its own, pointed at the
test internet. Two system users are made with `useradd` and every request is
sent by a process that really runs as one of them (fork + setuid), so the
broker's SO_PEERCRED identity is the real one. Nothing a test does may leave
a pod, a folder, a placeholder in a home or a user behind.
"""

from __future__ import annotations

import json
import os
import pickle
import pwd
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
from dataclasses import dataclass
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from awf_kernel import naming
from awf_kernel.broker.client import BrokerClient, BrokerError
from awf_kernel.broker.protocol import PORT_NAMES
from tests.conftest import in_ci
from tests.integration.conftest import RUNTIME, web_host_ranges

REPO = Path(__file__).resolve().parents[2]
KERNELS_PER_USER = 2
REQUESTS_PER_USER = 4
REQUEST_TIMEOUT = 3.0

if os.geteuid() != 0:
    msg = "the broker tests make system users and run the broker as root"
    if in_ci():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg, allow_module_level=True)


# --- users and acting as them ------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.home, *parts)


def _make_user(prefix: str) -> User:
    name = prefix + secrets.token_hex(3)
    subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/sh",
                    "--user-group", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _home_listing(user: User) -> list[str]:
    return sorted(str(p.relative_to(user.home)) for p in Path(user.home).rglob("*"))


class Lingering:
    """A child that stays alive after its call, as a user's Jupyter server
    does after it started a kernel: the broker removes a kernel's pod once the
    process that asked for it is gone."""

    live: list["Lingering"] = []

    def __init__(self, pid: int, hold: int):
        self.pid, self._hold = pid, hold
        Lingering.live.append(self)

    def release(self) -> None:
        if self._hold >= 0:
            os.close(self._hold)
            self._hold = -1
            os.waitpid(self.pid, 0)
        if self in Lingering.live:
            Lingering.live.remove(self)


def as_user(user: User | int, fn, *args, linger: bool = False, **kwargs):
    """Run fn(*args, **kwargs) in a child that is `user` for real (uid, gid,
    no supplementary groups); return its result or re-raise a BrokerError.
    With linger=True the child stays alive until the returned Lingering
    handle is released: (result, handle)."""
    uid, gid = (user.uid, user.gid) if isinstance(user, User) else (user, user)
    r, w = os.pipe()
    hold_r, hold_w = os.pipe() if linger else (-1, -1)
    pid = os.fork()
    if pid == 0:  # the child: become the user, run, report, leave without cleanup
        try:
            os.close(r)
            for other in Lingering.live:  # their hold ends must close when the parent releases them
                os.close(other._hold)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                result = ("ok", fn(*args, **kwargs))
            except BrokerError as exc:
                result = ("broker-error", exc.message, exc.code, exc.hint)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = ("exception", repr(exc))
            os.write(w, pickle.dumps(result))
            os.close(w)
            if linger:
                os.close(hold_w)
                os.read(hold_r, 1)  # until the parent releases it
        finally:
            os._exit(0)
    os.close(w)
    if linger:
        os.close(hold_r)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    handle = None
    if linger:
        handle = Lingering(pid, hold_w)
    else:
        os.waitpid(pid, 0)
    result = pickle.loads(data)
    if result[0] != "ok" and handle is not None:
        handle.release()
    if result[0] == "broker-error":
        raise BrokerError(result[1], result[2], result[3])
    if result[0] == "exception":
        raise AssertionError(f"as_user({uid}): {result[1]}")
    return (result[1], handle) if linger else result[1]


def call(url: str, op: str, **fields):
    return BrokerClient(url).call(op, **fields)


def refused(user, url: str, op: str, **fields) -> BrokerError:
    with pytest.raises(BrokerError) as info:
        as_user(user, call, url, op, **fields)
    return info.value


def raw_exchange(path: str, data: bytes, *, close_after_send: bool = False, shut_write: bool = True,
                 wait: float = 0.0) -> bytes:
    """Send bytes as they are (runs as the user via as_user); return the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the broker stopped reading (a too-large request): its answer is still there
        if close_after_send:
            return b""
        if shut_write:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        time.sleep(wait)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def _answer(data: bytes) -> dict:
    return json.loads(data.decode())


# --- the broker -------------------------------------------------------------------------------------------

class BrokerProcess:
    def __init__(self, base: Path, config_file: Path):
        self.base, self.config_file = base, config_file
        self.socket = str(base / "run" / "broker.sock")
        self.url = "unix://" + self.socket
        self.log = base / "broker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "awf_kernel.broker", "--config", str(self.config_file)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the broker exited:\n" + self.log_text()
            try:
                call(self.url, "ping")
                return
            except BrokerError:
                time.sleep(0.2)
        raise AssertionError("the broker did not answer within 60 s:\n" + self.log_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def users():
    made: list[User] = []
    try:
        made.append(_make_user("awfu1"))
        made.append(_make_user("awfu2"))
        yield made
    finally:
        for u in made:
            subprocess.run(["pkill", "-KILL", "-u", str(u.uid)], capture_output=True)
            subprocess.run(["userdel", "--remove", "--force", u.name], capture_output=True)
        for u in made:
            assert not os.path.exists(u.home), f"{u.home} was not removed"


@pytest.fixture(scope="module")
def broker(testnet, awf_images, users, docker_client):
    """A broker (subprocess, root) with a config pointing at the test internet.
    At the end: no pod of the test users, no kernel folder, no placeholder."""
    base = Path(tempfile.mkdtemp(prefix="awf-broker-test-", dir="/tmp"))
    os.chmod(base, 0o755)  # the users reach the socket below it
    config_file = base / "broker.py"
    config_file.write_text(textwrap.dedent(f"""\
        c.BrokerConfig.socket_path = {str(base / "run" / "broker.sock")!r}
        c.BrokerConfig.audit_dir = {str(base / "audit")!r}
        c.BrokerConfig.egress_network = {testnet.network!r}
        c.BrokerConfig.dns_servers = [{testnet.dns_ip!r}]
        c.BrokerConfig.allow_private_destinations = {web_host_ranges(testnet)!r}
        c.BrokerConfig.kernels_per_user = {KERNELS_PER_USER}
        c.BrokerConfig.requests_per_user = {REQUESTS_PER_USER}
        c.BrokerConfig.request_timeout = {REQUEST_TIMEOUT}
        c.BrokerConfig.startup_timeout = 60.0
        c.BrokerConfig.kernel_runtime = {RUNTIME!r}
    """))
    homes_before = {u.name: _home_listing(u) for u in users}
    proc = BrokerProcess(base, config_file)
    proc.start()
    try:
        yield proc
    finally:
        for server in list(Lingering.live):
            server.release()
        proc.stop()
        left = {}
        for u in users:
            pods = docker_client.containers.list(all=True, filters={"label": [f"{naming.OWNER_UID}={u.uid}"]})
            for c in pods:
                left.setdefault(u.name, set()).add(c.labels.get(naming.KERNEL_ID))
        from awf_kernel.sandbox.docker import remove_pod

        for kids in left.values():
            for kid in kids:
                remove_pod(kid)
        kernel_dirs = sorted(os.listdir(base / "run" / "kernels")) if (base / "run" / "kernels").is_dir() else []
        scratch = {u.name: sorted(os.listdir(base / "run" / "users" / str(u.uid)))
                   for u in users if (base / "run" / "users" / str(u.uid)).is_dir()}
        homes_after = {u.name: _home_listing(u) for u in users}
        log = proc.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"pods left behind: {left}\n{log}"
        assert kernel_dirs == [], f"kernel folders left behind: {kernel_dirs}"
        assert all(names == [f"awf-kernel-placeholders-{u.uid}.lock"] for u in users
                   for names in [scratch.get(u.name, [f"awf-kernel-placeholders-{u.uid}.lock"])]), scratch
        assert homes_after == homes_before, "placeholders or files left in the users' homes"
        assert not os.path.exists(proc.socket)


# --- starting kernels ----------------------------------------------------------------------------------------

def free_ports() -> dict[str, int]:
    socks = []
    try:
        for _ in PORT_NAMES:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return dict(zip(PORT_NAMES, (s.getsockname()[1] for s in socks)))
    finally:
        for s in socks:
            s.close()


def make_notebook(user: User, rel: str, awf: dict | None = None) -> str:
    path = user.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nb = {"cells": [], "metadata": {"awf": awf} if awf else {}, "nbformat": 4, "nbformat_minor": 5}
    Path(path).write_text(json.dumps(nb))
    for p in (path, os.path.dirname(path)):
        os.chown(p, user.uid, user.gid)
    return path


@dataclass
class Started:
    kernel_id: str
    ports: dict[str, int]
    key: str
    reply: dict

    def client(self) -> BlockingKernelClient:
        kc = BlockingKernelClient()
        kc.load_connection_info({**self.ports, "ip": "127.0.0.1", "key": self.key.encode(), "transport": "tcp",
                                 "signature_scheme": "hmac-sha256"})
        kc.start_channels(hb=False)  # liveness is the broker's to tell; a heartbeat calls a slow start dead
        kc.wait_for_ready(timeout=120)
        return kc


def start_request(cwd: str, **fields) -> dict:
    return {"kernel_id": str(uuid.uuid4()), "ports": free_ports(), "key": secrets.token_hex(16), "cwd": cwd,
            "env": {"LANG": "C.UTF-8"}, **fields}


def start(user: User, url: str, cwd: str, **fields) -> Started:
    """Start a kernel as `user` from a process that lives on (its "server")."""
    req = start_request(cwd, **fields)
    reply, server = as_user(user, call, url, "start", linger=True, **req)
    started = Started(req["kernel_id"], req["ports"], req["key"], reply)
    started.server = server
    return started


def run_code(kc: BlockingKernelClient, code: str, timeout: float = 60):
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    kc.execute_interactive(textwrap.dedent(code), output_hook=hook, timeout=timeout, allow_stdin=False)
    assert not errors, errors
    return json.loads("".join(out).strip().splitlines()[-1])


def pods_of(docker_client, user: User) -> list:
    return docker_client.containers.list(all=True, filters={"label": [f"{naming.OWNER_UID}={user.uid}"]})


def kernel_ids(user: User, url: str) -> list[str]:
    return [k["kernel_id"] for k in as_user(user, call, url, "list")["kernels"]]


POLICY = {"allow_domains": ["allowed.test", "*.allowed.test"]}
# Kernel code: get(url) -> the HTTP status, or the exception's name.
GET_IN_KERNEL = textwrap.dedent("""
    import json, urllib.request
    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return r.status
        except Exception as exc:
            return type(exc).__name__
""")


@pytest.fixture(scope="module")
def u1_kernel(broker, users):
    """User 1's kernel, started through the broker for a notebook in their home."""
    u1 = users[0]
    nb = make_notebook(u1, "project/analysis.ipynb", POLICY)
    k = start(u1, broker.url, os.path.dirname(nb), notebook=nb, policy=POLICY)
    k.notebook = nb
    yield k
    try:
        as_user(u1, call, broker.url, "stop", kernel_id=k.kernel_id)
    except BrokerError:
        pass
    shutil.rmtree(u1.path("project"))


# --- the kernel works, as its user, with its policy -------------------------------------------------------

def test_kernel_runs_as_its_user_and_reaches_only_declared_hosts(broker, users, u1_kernel, testnet, docker_client):
    u1 = users[0]
    assert u1_kernel.reply["ip"] == "127.0.0.1" and u1_kernel.reply["shell_port"] == u1_kernel.ports["shell_port"]
    assert u1_kernel.reply["policy"]["allow_domains"] == ["allowed.test", "*.allowed.test"]
    pods = pods_of(docker_client, u1)
    assert {c.labels[naming.KERNEL_ID] for c in pods} == {u1_kernel.kernel_id}
    assert {c.labels[naming.OWNER_UID] for c in pods} == {str(u1.uid)}
    # the broker's kernel_runtime (AWF_TEST_RUNTIME in a gVisor pass), checked
    # mounts and all: under gVisor the broker reads them through the gofer
    kernel_c = [c for c in pods if c.labels[naming.ROLE] == "kernel"][0]
    assert kernel_c.attrs["HostConfig"]["Runtime"] == (RUNTIME or docker_client.info()["DefaultRuntime"])

    mark = testnet.mark()
    kc = u1_kernel.client()
    try:
        res = run_code(kc, GET_IN_KERNEL + textwrap.dedent(f"""
            import os
            try:
                open({u1_kernel.notebook!r}, "a").close()
                nb_writable = True
            except OSError:
                nb_writable = False
            open("made-by-kernel.txt", "w").write("hi")
            print(json.dumps({{"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
                              "allowed": get("http://allowed.test/broker"), "blocked": get("http://blocked.test/broker"),
                              "nb_writable": nb_writable}}))
        """))
    finally:
        kc.stop_channels()
    assert (res["uid"], res["gid"]) == (u1.uid, u1.gid)
    assert res["cwd"] == u1.path("project")
    assert res["allowed"] == 200
    assert res["blocked"] != 200
    assert res["nb_writable"] is False  # the notebook is read-only in its kernel
    made = Path(u1.path("project", "made-by-kernel.txt"))
    assert made.stat().st_uid == u1.uid
    made.unlink()
    assert [h["path"] for h in testnet.web_hits("allowed.test", since=mark) if h["event"] == "request"] == ["/broker"]
    assert testnet.web_hits("blocked.test", since=mark) == []

    status = as_user(u1, call, broker.url, "status", kernel_id=u1_kernel.kernel_id)
    assert status["running"] is True and status["exit_code"] is None
    assert kernel_ids(u1, broker.url) == [u1_kernel.kernel_id]
    logs = as_user(u1, call, broker.url, "logs", kernel_id=u1_kernel.kernel_id)
    seen = {(r["host"], r["decision"]) for r in logs["records"]}
    assert ("allowed.test", "allowed") in seen and ("blocked.test", "denied") in seen


def test_another_user_cannot_see_or_touch_it(broker, users, u1_kernel):
    u1, u2 = users
    kid = u1_kernel.kernel_id
    nobody = str(uuid.uuid4())
    for op, extra in (("status", {}), ("signal", {"signal": 9}), ("stop", {}), ("logs", {}),
                      ("policy", {"policy": {"allow_domains": ["blocked.test"]}})):
        theirs = refused(u2, broker.url, op, kernel_id=kid, **extra)
        missing = refused(u2, broker.url, op, kernel_id=nobody, **extra)
        assert theirs.code == missing.code == "no-such-kernel", (op, theirs)
        assert theirs.message.replace(kid, "ID") == missing.message.replace(nobody, "ID")  # no hint it exists
    assert kernel_ids(u2, broker.url) == []
    assert as_user(u2, call, broker.url, "gc")["removed"] == []
    # and the kernel is unharmed
    assert as_user(u1, call, broker.url, "status", kernel_id=kid)["running"] is True


def test_live_policy_through_the_broker(broker, users, u1_kernel, testnet):
    """The owner's server sends the notebook's new request; the broker puts it
    in force in the running pod (no restart: the kernel's state survives)."""
    u1 = users[0]
    kc = u1_kernel.client()
    fetch = GET_IN_KERNEL + 'print(json.dumps({"other": get("http://other.test/live"), "state": globals().get("state")}))\n'
    try:
        run_code(kc, "state = 'kept'; print(1)")
        mark = testnet.mark()
        assert run_code(kc, fetch)["other"] != 200
        reply = as_user(u1, call, broker.url, "policy", kernel_id=u1_kernel.kernel_id,
                        policy={"allow_domains": [*POLICY["allow_domains"], "other.test"]})
        assert "other.test" in reply["policy"]["allow_domains"]
        assert run_code(kc, fetch) == {"other": 200, "state": "kept"}
        assert [h["path"] for h in testnet.web_hits("other.test", since=mark) if h["event"] == "request"] == ["/live"]
        as_user(u1, call, broker.url, "policy", kernel_id=u1_kernel.kernel_id, policy=POLICY)  # narrowed again
        mark = testnet.mark()
        assert run_code(kc, fetch)["other"] != 200
        assert testnet.web_hits("other.test", since=mark) == []
    finally:
        kc.stop_channels()


def test_the_same_kernel_id_cannot_be_taken(broker, users, u1_kernel, docker_client):
    u2 = users[1]
    err = refused(u2, broker.url, "start", **start_request(u2.home, kernel_id=u1_kernel.kernel_id))
    assert err.code == "refused" and "in use" in err.message
    assert pods_of(docker_client, u2) == []


# --- hostile starts ------------------------------------------------------------------------------------------

def _assert_nothing_made(broker, docker_client, user, kernel_id):
    assert pods_of(docker_client, user) == []
    assert not (broker.base / "run" / "kernels" / kernel_id).exists()
    assert not (broker.base / "audit" / kernel_id).exists()
    assert not (broker.base / "run" / "users" / str(user.uid) / f"awf-kernel-{kernel_id}-protect").exists()


@pytest.mark.parametrize("where", ["other-home", "other-project", "etc", "root", "docker-sock-dir", "missing"])
def test_cwd_outside_own_folders_is_refused(broker, users, u1_kernel, docker_client, where):
    u1, u2 = users
    cwd = {"other-home": u1.home, "other-project": u1.path("project"), "etc": "/etc", "root": "/",
           "docker-sock-dir": "/var/run", "missing": u2.path("does-not-exist")}[where]
    req = start_request(cwd)
    err = refused(u2, broker.url, "start", **req)
    assert err.code == "refused", err
    assert "not inside your notebook folders" in err.message or "not a folder" in err.message
    _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])


def test_symlinks_out_of_the_home_are_refused(broker, users, u1_kernel, docker_client):
    u1, u2 = users
    links = {"escape": u1.home, "escape-project": u1.path("project"), "escape-etc": "/etc",
             "stolen.ipynb": u1_kernel.notebook}
    for name, target in links.items():
        os.symlink(target, u2.path(name))
        os.lchown(u2.path(name), u2.uid, u2.gid)
    try:
        for name in ("escape", "escape-project", "escape-etc"):
            req = start_request(u2.path(name))
            err = refused(u2, broker.url, "start", **req)
            assert err.code == "refused" and "not inside your notebook folders" in err.message, err
            _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])
        req = start_request(u2.home, notebook=u2.path("stolen.ipynb"))
        err = refused(u2, broker.url, "start", **req)
        assert err.code == "refused" and "notebook" in err.message, err
        _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])
    finally:
        for name in links:
            os.unlink(u2.path(name))


@pytest.mark.parametrize("case", ["not-owned", "a-folder", "other-users"])
def test_notebook_must_be_the_users_own_file(broker, users, u1_kernel, docker_client, case):
    u1, u2 = users
    if case == "not-owned":
        path = make_notebook(u2, "rootowned.ipynb")
        os.chown(path, 0, 0)
    elif case == "a-folder":
        path = u2.path("folder.ipynb")
        os.mkdir(path)
        os.chown(path, u2.uid, u2.gid)
    else:
        path = u1_kernel.notebook
    try:
        req = start_request(u2.home, notebook=path)
        err = refused(u2, broker.url, "start", **req)
        assert err.code == "refused" and "notebook" in err.message, err
        _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])
    finally:
        if case == "not-owned":
            os.unlink(path)
        elif case == "a-folder":
            os.rmdir(path)


@pytest.mark.parametrize("field, value", [
    ("extra_mounts", ["/:/host"]), ("kernel_uid", 0), ("mem_limit", "100g"), ("allow_domains", ["blocked.test"]),
    ("egress_network", "host"), ("domain_ceiling", None), ("pids_limit", 0),
])
def test_admin_settings_in_a_request_are_refused(broker, users, docker_client, field, value):
    u2 = users[1]
    req = start_request(u2.home, **{field: value})
    err = refused(u2, broker.url, "start", **req)
    assert err.code == "bad-request" and f"'{field}' is an admin setting" in err.message
    _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])


def test_images_policies_and_callers_the_config_does_not_allow(broker, users, docker_client):
    u2 = users[1]
    err = refused(u2, broker.url, "start", **start_request(u2.home, image="awf-kernel-testnet:latest"))
    assert err.code == "refused" and "not one the broker allows" in err.message
    err = refused(u2, broker.url, "start", **start_request(u2.home, policy={"allow_domains": ["*"]}))
    assert err.code == "bad-request" and "would allow everything" in err.message
    err = refused(0, broker.url, "start", **start_request("/root"))
    assert err.code == "refused" and "root never gets a kernel" in err.message
    err = refused(1, broker.url, "start", **start_request("/usr/sbin"))  # daemon: a system account
    assert err.code == "refused" and "system account" in err.message
    assert pods_of(docker_client, u2) == []


# --- hostile bytes -----------------------------------------------------------------------------------------------

def _still_answers(broker, user):
    assert as_user(user, call, broker.url, "ping")["uid"] == user.uid


def test_a_megabyte_request_is_refused(broker, users, docker_client):
    u2 = users[1]
    req = json.dumps({"op": "start", **start_request(u2.home), "pad": "x" * (1 << 20)}).encode() + b"\n"
    answer = _answer(as_user(u2, raw_exchange, broker.socket, req))
    assert answer["ok"] is False and answer["code"] == "bad-request" and "larger than 65536" in answer["error"]
    _still_answers(broker, u2)
    assert pods_of(docker_client, u2) == []


@pytest.mark.parametrize("data", [
    b"\x00" * 512, os.urandom(4096), b"{" * 1000, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b'{"op": "ping"',
    b'{"op": "start"}\n', b'\xef\xbb\xbf{"op": "ping"}\n', b"\n", b'{"op": "ping", "op": "start"}\n',
], ids=["nul", "random", "braces", "http", "unterminated", "start-empty", "bom", "empty-line", "dup-key"])
def test_garbage_gets_an_error_and_nothing_else(broker, users, docker_client, data):
    u2 = users[1]
    answer = _answer(as_user(u2, raw_exchange, broker.socket, data))
    assert answer["ok"] is False and answer["code"] == "bad-request"
    _still_answers(broker, u2)
    assert pods_of(docker_client, u2) == []


def test_half_a_request_then_disconnect_leaves_nothing(broker, users, docker_client):
    u2 = users[1]
    req = start_request(u2.home)
    line = json.dumps({"op": "start", **req}).encode() + b"\n"
    as_user(u2, raw_exchange, broker.socket, line[: len(line) // 2], close_after_send=True)
    _still_answers(broker, u2)
    time.sleep(0.5)
    assert kernel_ids(u2, broker.url) == []
    _assert_nothing_made(broker, docker_client, u2, req["kernel_id"])


def test_a_client_that_never_finishes_its_request_times_out(broker, users, docker_client):
    u2 = users[1]
    t = time.monotonic()
    answer = _answer(as_user(u2, raw_exchange, broker.socket, b'{"op": "ping"', shut_write=False))
    assert answer["code"] == "bad-request" and "no complete request" in answer["error"]
    assert REQUEST_TIMEOUT - 0.5 < time.monotonic() - t < REQUEST_TIMEOUT + 10


def test_one_user_cannot_tie_up_the_broker(broker, users):
    u1, u2 = users

    def hog(path: str) -> dict:
        held = []
        for _ in range(REQUESTS_PER_USER):  # connections that never send their request
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        time.sleep(0.5)
        extra = json.loads(raw_exchange(path, b'{"op": "ping"}\n'))
        for s in held:
            s.close()
        return extra

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # user 1 pings while user 2 holds all of their slots
        os.close(r)
        os.setgroups([])
        os.setgid(u1.gid)
        os.setuid(u1.uid)
        time.sleep(0.3)
        try:
            ok = BrokerClient(broker.url).call("ping")["uid"] == u1.uid
        except BrokerError:
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    extra = as_user(u2, hog, broker.socket)
    u1_ok = os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert extra["ok"] is False and extra["code"] == "busy"
    assert u1_ok, "another user's request was held up"
    _still_answers(broker, u2)


# --- limits, gc, disconnects, restarts ------------------------------------------------------------------------

def test_kernels_per_user_is_enforced(broker, users, docker_client):
    u2 = users[1]
    started = [start(u2, broker.url, u2.home) for _ in range(KERNELS_PER_USER)]
    try:
        assert sorted(kernel_ids(u2, broker.url)) == sorted(k.kernel_id for k in started)
        req = start_request(u2.home)
        err = refused(u2, broker.url, "start", **req)
        assert err.code == "limit" and f"at most {KERNELS_PER_USER}" in err.message
        assert not (broker.base / "run" / "kernels" / req["kernel_id"]).exists()
        assert len({c.labels[naming.KERNEL_ID] for c in pods_of(docker_client, u2)}) == KERNELS_PER_USER
    finally:
        for k in started:
            as_user(u2, call, broker.url, "stop", kernel_id=k.kernel_id)
    assert pods_of(docker_client, u2) == []
    assert kernel_ids(u2, broker.url) == []


def test_signal_status_and_gc_of_a_dead_kernel(broker, users, u1_kernel, docker_client):
    u2 = users[1]
    k = start(u2, broker.url, u2.home)
    as_user(u2, call, broker.url, "signal", kernel_id=k.kernel_id, signal=9)
    deadline = time.monotonic() + 30
    while (st := as_user(u2, call, broker.url, "status", kernel_id=k.kernel_id))["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert st["exit_code"] not in (None, 0)
    assert as_user(u2, call, broker.url, "gc")["removed"] == [k.kernel_id]
    assert pods_of(docker_client, u2) == []
    assert kernel_ids(u2, broker.url) == []
    # its audit trail stays, readable by its owner, and its id is not another user's to take
    assert as_user(u2, call, broker.url, "logs", kernel_id=k.kernel_id)["total"] >= 0
    assert refused(users[0], broker.url, "logs", kernel_id=k.kernel_id).code == "no-such-kernel"
    err = refused(users[0], broker.url, "start", **start_request(users[0].home, kernel_id=k.kernel_id))
    assert err.code == "refused" and "in use" in err.message
    assert as_user(users[0], call, broker.url, "status", kernel_id=u1_kernel.kernel_id)["running"] is True


def test_a_client_gone_during_its_start_finds_its_kernel_listed(broker, users, docker_client):
    u2 = users[1]
    req = start_request(u2.home)
    # The client hangs up mid-start but its process (its "server") lives on:
    # the kernel is made and listed. Once that process is gone, the pod goes.
    _, server = as_user(u2, raw_exchange, broker.socket, json.dumps({"op": "start", **req}).encode() + b"\n",
                        close_after_send=True, linger=True)
    deadline = time.monotonic() + 90
    while True:
        kernels = {k["kernel_id"]: k for k in as_user(u2, call, broker.url, "list")["kernels"]}
        if kernels.get(req["kernel_id"], {}).get("state") == "running":
            break
        assert time.monotonic() < deadline, kernels
        time.sleep(0.5)
    assert kernels[req["kernel_id"]]["running"] is True
    server.release()
    deadline = time.monotonic() + 20
    while pods_of(docker_client, u2) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert pods_of(docker_client, u2) == []


def test_a_restarted_broker_keeps_the_kernels_and_their_owners(broker, users, u1_kernel, docker_client):
    u1, u2 = users
    k = start(u2, broker.url, u2.home)
    broker.stop()
    assert {c.labels[naming.KERNEL_ID] for c in pods_of(docker_client, u2)} == {k.kernel_id}  # not orphaned...
    broker.start()
    assert kernel_ids(u2, broker.url) == [k.kernel_id]          # ... and found again, with its owner
    assert kernel_ids(u1, broker.url) == [u1_kernel.kernel_id]
    assert refused(u1, broker.url, "stop", kernel_id=k.kernel_id).code == "no-such-kernel"
    assert as_user(u2, call, broker.url, "status", kernel_id=k.kernel_id)["running"] is True
    kc = k.client()
    try:
        assert run_code(kc, "import os, json; print(json.dumps(os.getuid()))") == u2.uid
    finally:
        kc.stop_channels()
    as_user(u2, call, broker.url, "stop", kernel_id=k.kernel_id)
    assert pods_of(docker_client, u2) == []
    assert kernel_ids(u2, broker.url) == []


def test_root_sees_every_kernel_and_collects_only_dead_ones(broker, users, u1_kernel):
    u1 = users[0]
    kernels = call(broker.url, "list")["kernels"]  # the test process is root
    assert [(k["kernel_id"], k["owner_uid"], k["running"]) for k in kernels] == [(u1_kernel.kernel_id, u1.uid, True)]
    assert call(broker.url, "gc")["removed"] == []
    assert as_user(u1, call, broker.url, "status", kernel_id=u1_kernel.kernel_id)["running"] is True


def test_a_kernel_whose_server_is_gone_is_removed(broker, users, docker_client):
    """A hub stopping its users' servers (SIGINT: jupyter_server exits without
    shutting its kernels down) must leave no pod: the broker notices that the
    process that asked for a kernel is gone and removes its pod."""
    u2 = users[1]
    k = start(u2, broker.url, u2.home)
    assert k.kernel_id in kernel_ids(u2, broker.url)
    k.server.release()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (docker_client.containers.list(
            all=True, filters={"label": [f"{naming.KERNEL_ID}={k.kernel_id}"]})
            or k.kernel_id in kernel_ids(u2, broker.url)):  # the table forgets it once the pod is gone
        time.sleep(0.3)
    assert docker_client.containers.list(all=True, filters={"label": [f"{naming.KERNEL_ID}={k.kernel_id}"]}) == []
    assert k.kernel_id not in kernel_ids(u2, broker.url)
    assert "is gone; removing its pod" in broker.log_text()


def _cli_as(user: User, argv: list[str]) -> tuple[int | str, str]:
    """Run `awf-kernel ARGV` in-process as `user`: (exit code, what it printed)."""
    import contextlib
    import io

    from awf_kernel import audit, cli, doctor, kernelspec, naming  # noqa: F401
    from awf_kernel.broker import client  # noqa: F401
    from awf_kernel.errors import AWFError
    from awf_kernel.sandbox import gc  # noqa: F401

    # The commands import these when they run; the child, once it is the user,
    # may not read this checkout (a CI clone made by mktemp -d is 0700), so the
    # parent imports them first.

    def run():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code: int | str = cli.main(argv)
            except AWFError as exc:
                code = str(exc)
        return code, out.getvalue()

    return as_user(user, run)


def test_cli_logs_gc_and_doctor_go_through_the_broker(broker, users, u1_kernel):
    """On a hub `logs`, `gc` and `doctor` ask the broker, for the calling user only."""
    from awf_kernel.doctor import broker_check

    u1, u2 = users
    code, out = _cli_as(u1, ["logs", "--broker", broker.url, u1_kernel.kernel_id])
    assert code == 0, (code, out)
    code, out = _cli_as(u2, ["logs", "--broker", broker.url, u1_kernel.kernel_id])
    assert code == 2 and "no such kernel" in out.lower(), (code, out)
    code, out = _cli_as(u2, ["gc", "--broker", broker.url])
    assert code == 0 and "nothing to collect" in out, (code, out)
    assert u1_kernel.kernel_id in kernel_ids(u1, broker.url)  # another user's gc took nothing of u1's
    check = as_user(u1, broker_check, broker.url)
    assert check.ok and f"uid {u1.uid}" in check.detail, check
    assert not broker_check("unix:///nonexistent/broker.sock").ok
