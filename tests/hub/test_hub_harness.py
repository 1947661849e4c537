"""The hub harness itself: real users, a real hub, servers and kernels as those
users, nothing of Docker within their reach, nothing left afterwards.
Plain `python3` kernels (ipykernel in the users' Python): no sandbox involved."""

from __future__ import annotations

import grp
import json
import os
import sys

import pytest

from tests.hub.hub_fixtures import _require, running_hub

DOCKER_SOCK = "/var/run/docker.sock"

PROBE = """
import json, os
try:
    fd = os.open("/var/run/docker.sock", os.O_RDWR)
    os.close(fd)
    docker = "opened"
except OSError as e:
    docker = type(e).__name__
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                  "groups": sorted(os.getgroups()), "cwd": os.getcwd(),
                  "session": os.environ.get("JPY_SESSION_NAME"), "docker": docker,
                  "home": os.path.expanduser("~"), "ppid_uid": os.stat(f"/proc/{os.getppid()}").st_uid}))
"""


@pytest.fixture(scope="module")
def mhub(users_python):
    with running_hub(users_python) as hub:
        for user in hub.users:
            hub.write_notebook(user, "work/harness.ipynb", ["print('hello')"])
        hub.servers = {srv.user.name: srv for srv in hub.start_servers(*hub.users)}
        yield hub
    assert hub.leftovers() == []


def test_users_are_real_and_not_in_docker_group(mhub):
    assert len(mhub.users) == 2
    docker_gid = _docker_gid()
    for user in mhub.users:
        res = mhub.run_as(user, "id", "-u")
        assert res.returncode == 0, res.stderr
        assert int(res.stdout) == user.uid != 0
        assert "docker" not in user.groups
        if docker_gid is not None:
            assert docker_gid not in os.getgrouplist(user.name, user.gid)
        assert user.home.is_dir() and user.home.stat().st_uid == user.uid
        assert user.home.stat().st_mode & 0o077 == 0, "homes are private"


def test_servers_started_through_rest_api(mhub):
    for user in mhub.users:
        model = mhub.user_model(user)
        assert model["servers"][""]["ready"] is True
        # the user's own token sees its server; the server lists its kernels
        assert mhub.servers[user.name].api("GET", "/kernels").status_code == 200
        assert "python3" in mhub.servers[user.name].kernelspecs()["kernelspecs"]
    # and the server process itself runs as the user
    singleuser = {pid: cmd for pid, cmd in mhub.processes().items() if "jupyterhub-singleuser" in cmd}
    uids = {os.stat(f"/proc/{pid}").st_uid for pid in singleuser}
    assert uids == {u.uid for u in mhub.users}


def test_kernels_run_as_their_users_and_cannot_reach_docker(mhub):
    _require(os.path.exists(DOCKER_SOCK), f"{DOCKER_SOCK} is missing: start Docker (scripts/ensure-docker.sh)")
    for user in mhub.users:
        srv = mhub.servers[user.name]
        session = srv.start_session("work/harness.ipynb", "python3")
        with srv.kernel(session["kernel"]["id"]) as k:
            facts = k.probe(PROBE)
            again = k.execute("21 * 2")
        assert facts["uid"] == facts["euid"] == user.uid
        assert facts["gid"] == user.gid
        assert _docker_gid() not in facts["groups"]
        assert facts["ppid_uid"] == user.uid  # the server that launched it
        assert facts["cwd"] == str(user.home / "work")
        # jupyter_server passes the notebook path (absolute in this setup: the
        # singleuser server's root_dir is the home; relative in older servers)
        assert facts["session"] in (str(user.home / "work/harness.ipynb"), "work/harness.ipynb")
        assert facts["docker"] == "PermissionError"
        assert again["result"] == "42" and again["error"] is None
        srv.delete_session(session["id"])
        # and from the user's shell
        res = mhub.shell(user, "python -c 'import os; os.open(\"/var/run/docker.sock\", os.O_RDWR)'")
        assert res.returncode != 0 and "PermissionError" in res.stderr


def test_errors_come_back(mhub):
    user = mhub.users[0]
    srv = mhub.servers[user.name]
    kernel = srv.start_kernel("python3")
    try:
        with srv.kernel(kernel["id"]) as k:
            res = k.execute("import sys; print('out'); print('err', file=sys.stderr); 1/0")
        assert res["stdout"] == "out\n" and res["stderr"] == "err\n"
        assert res["error"] == "ZeroDivisionError: division by zero"
        assert res["reply"]["status"] == "error"
    finally:
        srv.api("DELETE", f"/kernels/{kernel['id']}")


def test_a_user_cannot_reach_another_users_server(mhub):
    alice, bob = mhub.users
    a, b = mhub.servers[alice.name], mhub.servers[bob.name]
    r = a._http.get(f"{b.base}/api/kernels", timeout=30, allow_redirects=False)
    assert r.status_code in (302, 403), (r.status_code, r.text[:200])
    # nor read the other's home from their shell
    res = mhub.run_as(alice, "ls", str(bob.home))
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_hub_shuts_down_cleanly(hub):
    for srv in hub.start_servers(*hub.users):
        kernel = srv.start_kernel("python3")
        assert srv.execute(kernel["id"], "print('up')")["stdout"] == "up\n"
    running = hub.processes()
    assert any("jupyterhub-singleuser" in c for c in running.values())
    assert any("ipykernel" in c for c in running.values())
    assert any("configurable-http-proxy" in c for c in running.values())

    hub.stop()  # SIGTERM, as an admin would; raises if the hub needs killing
    assert hub.proc.returncode == 0, hub.log_tail()
    assert hub.leftover_processes == {}, "the hub left processes behind (ended by the fixture)"
    assert hub.listening_ports() == []
    assert hub.processes() == {}


def _docker_gid():
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return None


def test_extension_points(make_hub):
    """What the hub-mode tests build on: a managed service (run by the hub, as
    root), extra user environment, a kernel spec on the users' JUPYTER_PATH,
    extra config lines; all of it gone after stop()."""
    hub = make_hub(
        n_users=1,
        services=[{"name": "sleeper", "command": [sys.executable, "-c", "import time; time.sleep(600)"]}],
        environment={"AWF_HUB_TEST_MARK": "hello"},
        extra_config="c.Spawner.environment['FROM_EXTRA_CONFIG'] = 'yes'\n")
    spec = hub.kernels_dir / "marked-python"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [hub.users_python.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "marked", "language": "python", "env": {"SPEC_MARK": "from-spec"}}))
    os.chmod(spec, 0o755)
    os.chmod(spec / "kernel.json", 0o644)
    hub.start()
    sleepers = [pid for pid, cmd in hub.processes().items() if "time.sleep(600)" in cmd]
    assert len(sleepers) == 1 and os.stat(f"/proc/{sleepers[0]}").st_uid == 0

    (user,) = hub.users
    srv = hub.start_server(user)
    assert "marked-python" in srv.kernelspecs()["kernelspecs"]
    session = srv.start_session("marked.ipynb", "marked-python")
    with srv.kernel(session["kernel"]["id"]) as k:
        got = k.probe("import json, os; print(json.dumps([os.environ.get('SPEC_MARK'), "
                      "os.environ.get('AWF_HUB_TEST_MARK'), os.environ.get('FROM_EXTRA_CONFIG'), "
                      "os.getuid()]))")
    assert got == ["from-spec", "hello", "yes", user.uid]

    hub.stop()
    assert hub.proc.returncode == 0, hub.log_tail()
    assert hub.leftover_processes == {}
    assert not os.path.exists(f"/proc/{sleepers[0]}")
