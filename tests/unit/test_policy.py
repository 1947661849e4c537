"""Domain grammar, requests and the effective policy (pure logic)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awf_kernel.errors import CeilingError, PolicyError
from awf_kernel.policy import (DomainRule, Policy, PolicyRequest, covers, normalize_host, parse_domain,
                               parse_domains, parse_request, parse_request_json, resolve_policy)
from awf_kernel.render.resolver import render_resolver_config
from awf_kernel.render.squid import render_squid_conf


@pytest.mark.parametrize("entry,rule", [
    ("example.com", DomainRule("example.com", "exact")),
    ("*.example.com", DomainRule("example.com", "subdomains")),
    (".example.com", DomainRule("example.com", "both")),
    ("Example.COM.", DomainRule("example.com", "exact")),
    ("bücher.de", DomainRule("xn--bcher-kva.de", "exact")),
    ("*.githubusercontent.com", DomainRule("githubusercontent.com", "subdomains")),  # private PSL section is fine
    ("a-b.c0.example.co.uk", DomainRule("a-b.c0.example.co.uk", "exact")),
    ("allowed.test", DomainRule("allowed.test", "exact")),
])
def test_valid_entries(entry, rule):
    assert parse_domain(entry, "x") == rule


@pytest.mark.parametrize("entry,why", [
    ("*", "everything"), (".", "everything"), ("*.", "everything"), ("", "empty"),
    ("com", "public suffix"), (".com", "public suffix"), ("*.co.uk", "public suffix"), ("co.uk", "public suffix"),
    ("test", "public suffix"), (".test", "public suffix"),
    ("10.0.0.1", "IP address"), ("[::1]", "IP address"), ("::1", "IP address"), ("0x7f000001", "IP address"),
    ("127.1", "IP address"),
    ("example.com:443", "ports"), ("https://example.com", "scheme"), ("example.com/path", "scheme"),
    ("exa mple.com", "whitespace"), (" example.com", "whitespace"), ("example.com\n", "whitespace"),
    ("ex*ample.com", "'*'"), ("*.*.example.com", "'*'"), ("example.*", "'*'"),
    ("a..example.com", "not a host"), ("-a.example.com", "not a host"), ("a-.example.com", "not a host"),
    ('ex"ample.com', "not a host"), ("ex'ample.com", "not a host"), ("ex\\ample.com", "not a host"),
    ("ex#ample.com", "not a host"), ("ex;ample.com", "not a host"), ("ex\x00ample.com", "not a host"),
    ("a" * 64 + ".com", "not a host"), (("a" * 60 + ".") * 5 + "com", "not a host"),
])
def test_invalid_entries_name_the_entry(entry, why):
    with pytest.raises(PolicyError) as info:
        parse_domain(entry, "notebook metadata awf.allow_domains[3]")
    msg = info.value.message
    assert "awf.allow_domains[3]" in msg
    assert repr(entry) in msg or entry == ""
    assert why.lower() in msg.lower()


@pytest.mark.parametrize("value", [None, 3, ["x.com"], {"a": 1}])
def test_non_string_entries(value):
    if value is None:
        with pytest.raises(PolicyError):
            parse_domain(value, "x")
    else:
        with pytest.raises(PolicyError, match="not a string"):
            parse_domain(value, "x")


@pytest.mark.parametrize("rule,host,expected", [
    ("example.com", "example.com", True), ("example.com", "www.example.com", False),
    ("*.example.com", "www.example.com", True), ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False), (".example.com", "example.com", True),
    (".example.com", "x.example.com", True), (".example.com", "badexample.com", False),
    ("example.com", "EXAMPLE.com.", True), ("example.com", "10.0.0.1", False),
    (".example.com", "example.com.evil.net", False),
])
def test_matching(rule, host, expected):
    assert parse_domain(rule, "x").matches(host) is expected


@pytest.mark.parametrize("outer,inner,expected", [
    (".a.com", "a.com", True), (".a.com", "*.a.com", True), (".a.com", "x.a.com", True), (".a.com", ".a.com", True),
    ("*.a.com", "x.a.com", True), ("*.a.com", "*.x.a.com", True), ("*.a.com", "*.a.com", True),
    ("*.a.com", "a.com", False), ("*.a.com", ".a.com", False),
    ("a.com", "a.com", True), ("a.com", "x.a.com", False), ("a.com", "*.a.com", False),
    (".a.com", "b.com", False), (".a.com", "xa.com", False),
])
def test_covers(outer, inner, expected):
    assert covers(parse_domain(outer, "o"), parse_domain(inner, "i")) is expected


def rules(*entries):
    return parse_domains(list(entries), "t")


def test_effective_policy_formula():
    request = PolicyRequest(allow=rules("a.example.org", "b.example.org"), block=rules("b.example.org"), source="nb")
    policy = resolve_policy(admin_allow=rules("@pypi"), admin_block=rules("pypi.org"),
                            ceiling=rules(".example.org"), request=request)
    assert policy.decide("a.example.org").allowed
    assert not policy.decide("b.example.org").allowed and policy.decide("b.example.org").reason == "blocked"
    assert policy.decide("files.pythonhosted.org").allowed  # admin allow, no notebook needed
    assert not policy.decide("pypi.org").allowed  # admin block beats admin allow: deny wins
    assert not policy.decide("c.example.org").allowed


def test_ceiling_error_names_domain_and_setting():
    request = PolicyRequest(allow=rules("evil.com"), source="notebook /x.ipynb metadata awf")
    with pytest.raises(CeilingError) as info:
        resolve_policy(ceiling=rules(".example.org"), request=request)
    assert "evil.com" in str(info.value) and "domain_ceiling" in str(info.value)


def test_empty_ceiling_forbids_requests_and_none_allows_all():
    request = PolicyRequest(allow=rules("a.com"))
    with pytest.raises(CeilingError):
        resolve_policy(ceiling=(), request=request)
    assert resolve_policy(ceiling=None, request=request).decide("a.com").allowed


def test_no_request_means_admin_only_and_deny_by_default():
    assert not resolve_policy().decide("anything.com").allowed


def test_record_mode():
    p = resolve_policy(request=PolicyRequest(mode="record", block=rules("bad.com")))
    assert p.mode == "record" and p.allow_all
    assert p.decide("whatever.org").allowed and not p.decide("bad.com").allowed
    capped = resolve_policy(ceiling=rules(".ok.org"), request=PolicyRequest(mode="record"))
    assert capped.decide("x.ok.org").allowed and not capped.decide("x.other.org").allowed
    with pytest.raises(PolicyError, match="record mode"):
        resolve_policy(request=PolicyRequest(mode="record", source="nb"), record_allowed=False)


@pytest.mark.parametrize("obj,fragment", [
    ([], "JSON object"), ("a.com", "JSON object"),
    ({"allow_domain": ["a.com"]}, "unknown key 'allow_domain'"),
    ({"allow_domains": "a.com"}, "list"), ({"allow_domains": [1]}, "not a string"),
    ({"allow_domains": ["a.com"] * 1001}, "at most 1000"), ({"mode": "yolo"}, "mode"),
])
def test_bad_requests(obj, fragment):
    with pytest.raises(PolicyError) as info:
        parse_request(obj, "notebook n.ipynb metadata awf")
    assert fragment in str(info.value) and "n.ipynb" in str(info.value)


def test_request_json():
    assert parse_request_json('{"allow_domains": ["a.com"]}', "AWF_POLICY").allow == rules("a.com")
    with pytest.raises(PolicyError, match="AWF_POLICY: not valid JSON"):
        parse_request_json("{nope", "AWF_POLICY")


def test_presets_expand_and_unknown_is_named():
    assert rules("@pypi") == rules("pypi.org", "files.pythonhosted.org")
    with pytest.raises(PolicyError) as info:
        rules("@nope")
    assert "@nope" in str(info.value) and "@pypi" in str(info.value)


def test_policy_json_roundtrip():
    p = resolve_policy(admin_allow=rules("a.com", "*.b.com", ".c.com"))
    assert p.to_json()["allow_domains"] == ["a.com", "*.b.com", ".c.com"]
    assert json.loads(json.dumps(p.to_json()))


# --- property-based ---------------------------------------------------------------------------------

SAFE = re.compile(r"^(\*\.|\.)?[a-z0-9.-]+$")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_refused_or_becomes_a_safe_rule(text):
    try:
        rule = parse_domain(text, "fuzz")
    except PolicyError:
        return
    assert SAFE.match(str(rule)), rule
    assert parse_domain(str(rule), "again") == rule


INJECTIONS = ["\n", "\r", " ", "\t", '"', "'", "#", ";", "/", ":", "\\", "%", "$", "`", "{", "}", "(", ")",
              "|", "&", "<", ">", ",", "=", "\x00", "\u2028"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["allowed.test", "*.allowed.test", ".allowed.test"]), st.sampled_from(INJECTIONS),
       st.text(alphabet=st.characters(codec="ascii"), max_size=20), st.booleans())
def test_injection_attempts_never_pass(base, bad, tail, at_end):
    entry = base + bad + tail if at_end else bad + tail + base
    with pytest.raises(PolicyError):
        parse_domain(entry, "fuzz")


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=2, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "*.", "."]), hosts).map("".join), max_size=5), hosts)
def test_rendered_configs_contain_only_validated_hosts(entries, probe):
    good = []
    for e in entries:
        try:
            good.append(parse_domain(e, "t"))
        except PolicyError:
            pass
    policy = Policy(allow=tuple(good))
    conf = render_squid_conf(policy, kernel_id="k")
    acl_lines = [l for l in conf.splitlines() if l.startswith("acl awf_allow ")]
    assert len(acl_lines) == max(1, len(good))
    for line in acl_lines:
        assert re.fullmatch(r"acl awf_allow dstdom_regex -n -i [\^\\()|.a-z0-9?$-]+", line), line
    cfg = json.loads(render_resolver_config(policy, kernel_id="k", upstreams=[]))
    assert sorted(h for v in cfg["allow"].values() for h in v) == sorted(r.host for r in good)
    # the regex Squid gets and the rule agree on what they match
    for rule in good:
        rx = re.compile(__import__("awf_kernel.render.squid", fromlist=["host_regex"]).host_regex(rule))
        assert bool(rx.search(probe)) == rule.matches(probe)


def test_normalize_host():
    assert normalize_host("WWW.Example.com.") == "www.example.com"
    assert normalize_host("10.0.0.1") is None and normalize_host("a b") is None and normalize_host("") is None
