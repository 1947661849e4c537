"""The server extension's REST API (/awf-kernel/api/...) on a real
JupyterLab: authentication and authorization are jupyter_server's, bad input
gets a 400 (or 404) whose message names what was wrong, and the answers use
the same grammar and messages as a kernel start (awf_kernel.policy)."""

from __future__ import annotations

import time

import pytest

from awf_kernel.errors import PolicyError
from awf_kernel.policy import parse_domain
from tests.browser.helpers import write_notebook

API = "/awf-kernel/api/"


@pytest.fixture
def notebook(lab):
    write_notebook(lab, "rest.ipynb", ["1"], {"allow_domains": ["allowed.test"]}, kernel="awf-ceiling")
    return "rest.ipynb"


def _message(entry: str, where: str) -> str:
    try:
        parse_domain(entry, where)
    except PolicyError as exc:
        return exc.message
    raise AssertionError(f"{entry!r} is valid")


@pytest.mark.parametrize("method,endpoint,body", [
    ("GET", "policy?path=rest.ipynb", None),
    ("POST", "validate", {"allow_domains": ["example.com"]}),
    ("POST", "check", {"path": "rest.ipynb", "hosts": ["example.com"]}),
    ("POST", "confirm", {"path": "rest.ipynb"}),
])
@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_unauthenticated_requests_are_refused(lab, notebook, method, endpoint, body, token):
    status, answer = lab.api(API + endpoint, method, body, token=token, check=False)
    assert status == 403, answer
    assert lab.api(f"{API}policy?path={notebook}")["trusted"] is True  # confirm did nothing


def test_a_browser_session_without_xsrf_is_refused(lab, notebook):
    """A cookie alone (what another site could make a browser send) is not enough for a POST."""
    import http.cookiejar
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{lab.url}/lab?token={lab_token()}", timeout=60).read()
    assert any(c.name.startswith("username") for c in jar)
    req = urllib.request.Request(f"{lab.url}{API}confirm", data=b'{"path": "rest.ipynb"}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(req, timeout=60)
    assert err.value.code == 403


def lab_token() -> str:
    from tests.browser.lab_fixtures import TOKEN
    return TOKEN


@pytest.mark.parametrize("method,endpoint,body,raw,status,says", [
    ("GET", "policy", None, None, 400, "path: required"),
    ("GET", "policy?path=..%2Fetc%2Fpasswd", None, None, 400, "is not a notebook path"),
    ("GET", "policy?path=missing.ipynb", None, None, 404, "no notebook missing.ipynb"),
    ("GET", "policy?path=rest.txt", None, None, 400, "is not a notebook path"),
    ("GET", "policy?path=.hidden%2Fsecret.ipynb", None, None, 404, "no notebook .hidden/secret.ipynb"),
    ("POST", "validate", None, b"{not json", 400, "must be JSON"),
    ("POST", "validate", [1, 2], None, 400, "must be a JSON object, not list"),
    ("POST", "validate", {"allow": ["x.com"]}, None, 400, "unknown field 'allow'"),
    ("POST", "check", {"path": "rest.ipynb"}, None, 400, "hosts: required"),
    ("POST", "check", {"path": "rest.ipynb", "hosts": "a.com"}, None, 400, "hosts: required"),
    ("POST", "check", {"path": "rest.ipynb", "hosts": ["a.com"] * 101}, None, 400, "at most 100"),
    ("POST", "check", {"hosts": ["a.com"]}, None, 400, "path: required"),
    ("POST", "confirm", {"path": "/etc/passwd"}, None, 400, "is not a notebook path"),
    ("POST", "confirm", {"path": 5}, None, 400, "is not a notebook path"),
])
def test_bad_input_gets_a_clear_error(lab, notebook, method, endpoint, body, raw, status, says):
    write_notebook(lab, ".hidden/secret.ipynb", ["1"], {"allow_domains": ["x.example"]})
    got, answer = lab.api(API + endpoint, method, body, raw=raw, check=False)
    assert got == status, answer
    assert says in answer["message"]


def test_validate_answers_with_the_servers_own_grammar(lab, notebook):
    entries = ["allowed.test", "*", "https://x.example", "@nope", "a..example"]
    got = lab.api(API + "validate", "POST", {"allow_domains": entries, "block_domains": "x.example"})
    assert got["valid"] is False
    by_index = {(e["field"], e["index"]): e for e in got["errors"]}
    for i in (1, 2, 4):
        assert by_index[("allow_domains", i)]["message"] == _message(entries[i], f"awf.allow_domains[{i}]")
    assert by_index[("allow_domains", 3)]["message"].startswith("awf.allow_domains[3]: unknown preset '@nope'")
    assert "known presets" in by_index[("allow_domains", 3)]["hint"]
    assert by_index[("block_domains", None)]["message"].startswith("awf.block_domains: must be a list")
    ok = lab.api(API + "validate", "POST", {"allow_domains": ["@pypi", ".allowed.test"]})
    assert ok == {"valid": True, "errors": [], "bounds_checked": False,
                  "expanded": {"allow_domains": ["pypi.org", "files.pythonhosted.org", ".allowed.test"],
                               "block_domains": []}}


def _start(lab, path: str) -> str:
    session = lab.api("/api/sessions", "POST", {"path": path, "type": "notebook", "name": path,
                                                "kernel": {"name": "awf-ceiling"}})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = lab.api(f"{API}policy?path={path}")
        if state["sandboxed"]:
            return session["kernel"]["id"]
        time.sleep(0.5)
    raise AssertionError("the kernel did not show up as sandboxed")


def test_policy_check_and_validate_use_the_kernels_admin_bounds(lab, notebook, testnet):
    kernel_id = _start(lab, notebook)
    state = lab.api(f"{API}policy?path={notebook}")
    assert state["state"] == {"kind": "enforce", "label": "Sandboxed: 1 domain"}
    [k] = state["kernels"]
    assert k["id"] == kernel_id
    assert k["policy"]["effective"]["allow_domains"] == ["allowed.test"]
    assert k["policy"]["admin"]["domain_ceiling"] == ["allowed.test", "*.allowed.test", "other.test"]
    assert k["policy"]["admin"]["block_domains"] == ["other.test"]

    hosts = ["blocked.test", "other.test", "a.allowed.test", "allowed.test", "x y", "192.0.2.1", "co.uk"]
    got = {r["host"]: r for r in lab.api(API + "check", "POST", {"path": notebook, "hosts": hosts})["results"]}
    assert "domain_ceiling" in got["blocked.test"]["reason"] and not got["blocked.test"]["allowable"]
    assert "block_domains" in got["other.test"]["reason"] and not got["other.test"]["allowable"]
    assert got["a.allowed.test"]["allowable"] is True
    assert got["allowed.test"]["already"] is True and not got["allowed.test"]["allowable"]
    for bad in ("x y", "192.0.2.1", "co.uk"):
        assert got[bad]["allowable"] is False and got[bad]["reason"]

    over = lab.api(API + "validate", "POST", {"allow_domains": ["blocked.test"], "path": notebook})
    assert over["valid"] is False and over["bounds_checked"] is True
    assert "outside the admin's domain_ceiling" in over["errors"][0]["message"]


def _save_awf(lab, path: str, awf: dict) -> None:
    """Save the notebook with a new awf entry through the contents API, as
    JupyterLab's metadata editor and Save do."""
    model = lab.api(f"/api/contents/{path}?content=1")
    nb = model["content"]
    nb["metadata"]["awf"] = awf
    for c in nb["cells"]:
        c.setdefault("metadata", {})["trusted"] = True  # the user's own session: it stays signed
    lab.api(f"/api/contents/{path}", "PUT", {"type": "notebook", "format": "json", "content": nb})


def test_a_saved_policy_outside_the_ceiling_changes_nothing_and_says_why(lab, notebook, testnet):
    kernel_id = _start(lab, notebook)
    _save_awf(lab, notebook, {"allow_domains": ["allowed.test", "blocked.test"]})
    state = lab.api(f"{API}policy?path={notebook}&wait=1")
    [k] = state["kernels"]
    assert k["last_apply"]["ok"] is False and "domain_ceiling" in k["last_apply"]["message"]
    assert k["policy"]["effective"]["allow_domains"] == ["allowed.test"]
    assert state["state"] == {"kind": "error", "label": "Sandboxed: 1 domain (last save not applied)"}

    _save_awf(lab, notebook, {"allow_domains": ["allowed.test", "a.allowed.test"]})
    state = lab.api(f"{API}policy?path={notebook}&wait=1")
    [k] = state["kernels"]
    assert k["id"] == kernel_id and k["last_apply"]["ok"] is True
    assert k["policy"]["effective"]["allow_domains"] == ["allowed.test", "a.allowed.test"]
    assert state["state"]["label"] == "Sandboxed: 2 domains"
    changes = lab.data_dir / "awf-kernel" / "audit" / kernel_id / "policy-changes.jsonl"
    assert "a.allowed.test" in changes.read_text()  # the audit trail records the change


def test_a_renamed_notebooks_saves_still_reach_its_kernel(lab, notebook, testnet):
    kernel_id = _start(lab, notebook)
    [session] = [s for s in lab.api("/api/sessions") if s["path"] == notebook]
    lab.api(f"/api/contents/{notebook}", "PATCH", {"path": "renamed.ipynb"})  # what JupyterLab's rename does
    lab.api(f"/api/sessions/{session['id']}", "PATCH", {"path": "renamed.ipynb", "name": "renamed.ipynb"})
    _save_awf(lab, "renamed.ipynb", {"allow_domains": ["allowed.test", "a.allowed.test"]})
    state = lab.api(f"{API}policy?path=renamed.ipynb&wait=1")
    [k] = state["kernels"]
    assert k["id"] == kernel_id and k["last_apply"]["ok"] is True, k["last_apply"]
    assert k["policy"]["effective"]["allow_domains"] == ["allowed.test", "a.allowed.test"]
