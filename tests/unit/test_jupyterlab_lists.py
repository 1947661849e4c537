"""What the JupyterLab side asks before a list changes: the server's grammar
per entry, the admin bounds, and whether a denied host can be allowed."""

from __future__ import annotations

import pytest

from awf_kernel.errors import PolicyError
from awf_kernel.jupyterlab.handlers import state_label
from awf_kernel.jupyterlab.kernels import api_path
from awf_kernel.jupyterlab.lists import Bounds, can_allow, entry_errors, validate
from awf_kernel.policy import parse_domain

BOUNDS = Bounds.from_lists(allow=["pypi.org"], block=["evil.example.com"], ceiling=[".example.com", "pypi.org"])


def _message(entry, where):
    with pytest.raises(PolicyError) as err:
        parse_domain(entry, where)
    return err.value.message


@pytest.mark.parametrize("entry", ["*", ".com", "1.2.3.4", "http://x.example", "a b.example", "x.example:80", ""])
def test_each_bad_entry_gets_the_policy_modules_own_message(entry):
    [error] = entry_errors(["ok.example", entry], "allow_domains")
    assert error["index"] == 1 and error["field"] == "allow_domains"
    assert error["message"] == _message(entry, "awf.allow_domains[1]")


def test_presets_are_checked_and_expanded():
    [error] = entry_errors(["@nope"], "block_domains")
    assert error["message"] == "awf.block_domains[0]: unknown preset '@nope'"
    assert validate({"allow_domains": ["@pypi"]}, None)["expanded"]["allow_domains"] == \
        ["pypi.org", "files.pythonhosted.org"]


def test_not_a_list_is_one_error():
    [error] = entry_errors("a.example", "allow_domains")
    assert error["index"] is None and "must be a list" in error["message"]


def test_the_ceiling_is_checked_when_the_bounds_are_known():
    assert validate({"allow_domains": ["other.org"]}, None)["valid"] is True
    result = validate({"allow_domains": ["other.org"]}, BOUNDS)
    assert result["valid"] is False and "domain_ceiling" in result["errors"][0]["message"]
    assert validate({"allow_domains": ["a.example.com"]}, BOUNDS)["valid"] is True
    assert validate({"mode": "record"}, Bounds(record_allowed=False))["valid"] is False


@pytest.mark.parametrize("host,allowable,says", [
    ("a.example.com", True, ""),
    ("A.Example.COM.", True, ""),
    ("evil.example.com", False, "blocked by the administrator"),
    ("other.org", False, "domain_ceiling"),
    ("pypi.org", False, "allowed now"),
    ("mine.example.com", False, "this notebook's block_domains"),
    ("co.uk", False, "public suffix"),
    ("10.0.0.1", False, "not a valid host name"),
    ("x\u202eevil.example.com", False, "not a valid host name"),
    ("<img src=x>", False, "not a valid host name"),
    (None, False, "not a valid host name"),
])
def test_can_allow(host, allowable, says):
    got = can_allow(host, BOUNDS, {"block_domains": ["mine.example.com"]}, ["pypi.org"])
    assert got["allowable"] is allowable
    assert says in got["reason"]


def test_can_allow_without_known_bounds_still_checks_the_name():
    assert can_allow("a.example", None, None, None)["allowable"] is True
    assert can_allow("a..example", None, None, None)["allowable"] is False


@pytest.mark.parametrize("raw,expected", [
    ("a/b.ipynb", "a/b.ipynb"), ("/a//b.ipynb", "a/b.ipynb"), ("a/../b.ipynb", "b.ipynb"),
    ("../b.ipynb", None), ("..", None), ("", None), (None, None), (5, None), ("a\x00.ipynb", None),
])
def test_api_path(raw, expected):
    assert api_path(raw) == expected


def _entry(**policy):
    base = {"mode": "enforce", "effective": {"allow_domains": ["a.example", "b.example"]}, "pending": None}
    return {"policy": {**base, **policy}, "last_apply": None}


def test_state_label():
    assert state_label(None) == {"kind": "none", "label": "Sandboxed"}
    assert state_label(_entry())["label"] == "Sandboxed: 2 domains"
    assert state_label(_entry(effective={"allow_domains": ["a.example"]}))["label"] == "Sandboxed: 1 domain"
    assert state_label(_entry(mode="record"))["label"] == "Sandboxed: record mode"
    assert state_label(_entry(pending={"allow_domains": []}))["label"] == "Sandboxed: waiting for trust"
    assert state_label(_entry(hub=True))["label"] == "Sandboxed: hub mode"
    failed = {**_entry(), "last_apply": {"ok": False, "message": "x"}}
    assert state_label(failed) == {"kind": "error", "label": "Sandboxed: 2 domains (last save not applied)"}
