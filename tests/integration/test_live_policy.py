"""Live policy: a running kernel's policy changes without a restart, only
from the server side, and a notebook from elsewhere waits for consent.

Judged by the test internet: what reaches the web hosts (and the canary),
not by the errors the kernel sees.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import textwrap
import time

import nbformat
import pytest

from awf_kernel import trust
from awf_kernel.errors import PolicyError
from awf_kernel.policy import parse_request
from tests.integration.test_attacks import PROXY

pytestmark = pytest.mark.docker

FETCH = """
import json, requests
out = {}
for host in %r:
    for how, proxies in (("env", None), ("direct", {"http": None, "https": None})):
        try:
            out[host + " " + how] = requests.get(f"http://{host}/", timeout=5, **({} if proxies is None else {"proxies": proxies})).status_code
        except requests.RequestException as e:
            out[host + " " + how] = type(e).__name__
print(json.dumps(out))
"""


def run(coro):
    """A coroutine to its end in a thread of its own: the test's thread may
    already have an event loop running (another suite's fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def fetch(kernel, *hosts) -> dict:
    return kernel.probe(FETCH % (list(hosts),), timeout=120)


def update(kernel, policy: dict | None) -> float:
    request = None if policy is None else parse_request(policy, source="test")
    t = time.perf_counter()
    run(kernel.km.provisioner.update_policy(request, source="test"))
    return time.perf_counter() - t


def test_widening_and_narrowing_apply_to_the_running_kernel(start_kernel, testnet):
    k = start_kernel(policy={"allow_domains": ["allowed.test"]})
    k.run("state = 41")
    mark = testnet.mark()
    res = fetch(k, "other.test")
    assert all(v != 200 for v in res.values()), res
    assert testnet.web_hits("other.test", since=mark) == []

    seconds = update(k, {"allow_domains": ["allowed.test", "other.test"]})
    assert seconds < 2, f"the new policy took {seconds:.2f} s"
    mark = testnet.mark()
    res = fetch(k, "other.test")
    assert res == {"other.test env": 200, "other.test direct": 200}, res
    assert len([h for h in testnet.web_hits("other.test", since=mark) if h["event"] == "request"]) == 2
    assert k.probe("print(json.dumps(state + 1))") == 42  # no restart: the kernel's state is there

    update(k, {"allow_domains": ["other.test"]})  # narrowing applies too
    mark = testnet.mark()
    res = fetch(k, "allowed.test", "other.test")
    assert res["allowed.test env"] != 200 and res["allowed.test direct"] != 200, res
    assert res["other.test env"] == 200, res
    assert testnet.web_hits("allowed.test", since=mark) == []

    changes = (k.km.provisioner._audit_dir_for_change()).read_text().splitlines()
    assert [json.loads(line)["policy"]["allow_domains"] for line in changes][-2:] == [
        ["allowed.test", "other.test"], ["other.test"]]
    meta = json.loads((k.km.provisioner._audit_dir_for_change().parent / "policy.json").read_text())
    assert meta["policy"]["allow_domains"] == ["other.test"]  # the kernel's notices read this one


def test_a_request_beyond_the_ceiling_changes_nothing(start_kernel, testnet):
    k = start_kernel(policy={"allow_domains": ["allowed.test"]},
                     settings={"domain_ceiling": ["allowed.test", "other.test"]})
    before = k.km.provisioner.policy_view()
    with pytest.raises(PolicyError, match="blocked.test"):
        update(k, {"allow_domains": ["allowed.test", "blocked.test"]})
    assert k.km.provisioner.policy_view() == before
    mark = testnet.mark()
    res = fetch(k, "blocked.test", "allowed.test")
    assert res["blocked.test env"] != 200 and res["allowed.test env"] == 200, res
    assert testnet.web_hits("blocked.test", since=mark) == []


def test_code_in_the_kernel_cannot_change_its_policy(kernel, testnet):
    """The proxy's files and processes are out of the kernel's reach: it
    cannot see (so cannot signal) the resolver or Squid, write the policy or
    run the reload step."""
    res = kernel.probe("""
        import json, os, signal, subprocess
        out = {}
        seen = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
                for p in os.listdir("/proc") if p.isdigit()]
        out["seen"] = [c for c in seen if "squid" in c or "resolver" in c]
        for path in ("/etc/awf/next/squid.conf", "/etc/awf/squid.conf"):
            try:
                open(path, "w").write("http_access allow all")
                out[path] = "written"
            except OSError as e:
                out[path] = type(e).__name__
        out["reload"] = os.path.exists("/usr/local/bin/awf-reload")
        print(json.dumps(out))
    """)
    assert res["seen"] == [], res
    assert res["/etc/awf/next/squid.conf"] != "written" and res["/etc/awf/squid.conf"] != "written", res
    assert res["reload"] is False
    mark = testnet.mark()
    assert fetch(kernel, "blocked.test")["blocked.test env"] != 200
    assert testnet.web_hits("blocked.test", since=mark) == []


def test_a_kernel_racing_for_squids_ports_during_a_change_gets_nothing(start_kernel, testnet):
    """Squid's reconfigure closes and reopens its listening ports. A kernel
    that grabs one in that gap must not end up behind a half-applied policy:
    the change is confirmed only when Squid owns all three, else the kernel
    is stopped. Either way nothing reaches a host the policy does not allow."""
    k = start_kernel(policy={"allow_domains": ["allowed.test"]})
    # Squid's ports where the kernel reaches them (PROXY): its loopback, or a
    # routed pod's link address (a loopback of the kernel's own there holds
    # none of Squid's sockets).
    k.run(PROXY + textwrap.dedent("""
        import socket, threading
        grabbed, held = [], []
        def grab():
            for _ in range(20000):
                for port in (3128, 3129, 3130):
                    s = socket.socket()
                    try:
                        s.bind((PROXY, port)); s.listen(1); grabbed.append(port); held.append(s); return
                    except OSError:
                        s.close()
        threading.Thread(target=grab, daemon=True).start()
    """))
    mark = testnet.mark()
    try:
        update(k, {"allow_domains": ["allowed.test", "other.test"]})
        applied = True
    except Exception:  # noqa: BLE001 - the change failed closed
        applied = False
    if applied:
        assert k.km.is_alive()
        assert k.probe("import json; print(json.dumps(grabbed))") == []
    else:
        deadline = time.monotonic() + 10
        while k.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not k.km.is_alive(), "a policy change that was not confirmed must stop the kernel"
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert testnet.canary_hits(since=mark) == []


def _notebook(path, awf: dict, trusted: bool):
    nb = nbformat.v4.new_notebook(metadata={"awf": awf})
    nbformat.write(nb, str(path))
    if trusted:
        trust.trust(str(path))
    return str(path)


def test_an_untrusted_notebook_reaches_its_hosts_only_after_consent(start_kernel, testnet, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))  # the user's notary
    nb = _notebook(tmp_path / "downloaded.ipynb", {"allow_domains": ["other.test"]}, trusted=False)
    k = start_kernel(env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": nb}, cwd=str(tmp_path))
    view = k.km.provisioner.policy_view()
    assert view["pending"]["allow_domains"] == ["other.test"] and view["effective"]["allow_domains"] == []
    mark = testnet.mark()
    assert all(v != 200 for v in fetch(k, "other.test").values())
    assert testnet.web_hits("other.test", since=mark) == []

    run(k.km.provisioner.reload_policy(source="test: not yet trusted"))
    assert all(v != 200 for v in fetch(k, "other.test").values())

    trust.trust(nb)  # the user confirms ("Trust Notebook")
    run(k.km.provisioner.reload_policy(source="test: trusted"))
    mark = testnet.mark()
    assert fetch(k, "other.test")["other.test env"] == 200
    assert len(testnet.web_hits("other.test", since=mark)) >= 1
    assert k.km.provisioner.policy_view()["pending"] is None


def test_saving_the_trusted_notebook_with_new_metadata_applies_it(start_kernel, testnet, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    nb = _notebook(tmp_path / "mine.ipynb", {"allow_domains": ["allowed.test"]}, trusted=True)
    k = start_kernel(env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": nb}, cwd=str(tmp_path))
    assert fetch(k, "allowed.test")["allowed.test env"] == 200
    _notebook(tmp_path / "mine.ipynb", {"allow_domains": ["other.test"]}, trusted=True)  # saved by Jupyter
    run(k.km.provisioner.reload_policy())
    mark = testnet.mark()
    res = fetch(k, "allowed.test", "other.test")
    assert res["other.test env"] == 200 and res["allowed.test env"] != 200, res
    assert testnet.web_hits("allowed.test", since=mark) == []


def test_the_kernel_cannot_forge_the_users_trust(start_kernel, tmp_path, monkeypatch):
    """A kernel started in the home folder (which holds Jupyter's data folder)
    cannot read the notary's secret nor add a signature to its database: it
    cannot make a notebook of its own trusted for the next start."""
    home = tmp_path / "home"
    data = home / ".local" / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    home.mkdir()
    nb = _notebook(home / "mine.ipynb", {"allow_domains": ["allowed.test"]}, trusted=True)
    for path in [home, *home.rglob("*")]:
        os.chown(path, 1000, 1000) if os.getuid() == 0 else None
    def signatures():  # (the server itself updates last_seen when it checks a notebook)
        import sqlite3
        with sqlite3.connect(data / "nbsignatures.db") as db:
            return sorted(db.execute("SELECT algorithm, signature FROM nbsignatures").fetchall())
    before = (signatures(), (data / "notebook_secret").read_bytes())
    k = start_kernel(env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": nb}, cwd=str(home))
    res = k.probe(f"""
        import json, sqlite3
        out = {{}}
        try:
            out["secret"] = len(open({str(data / "notebook_secret")!r}, "rb").read())
        except OSError as e:
            out["secret"] = type(e).__name__
        try:
            db = sqlite3.connect({str(data / "nbsignatures.db")!r})
            db.execute("INSERT INTO nbsignatures (algorithm, signature, path, last_seen) VALUES ('sha256', 'x', 'y', 0)")
            db.commit()
            out["db"] = "written"
        except Exception as e:
            out["db"] = type(e).__name__
        print(json.dumps(out))
    """)
    assert res["secret"] in (0, "PermissionError", "FileNotFoundError", "IsADirectoryError"), res
    assert res["db"] != "written", res
    assert (signatures(), (data / "notebook_secret").read_bytes()) == before
