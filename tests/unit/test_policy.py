"""Domain grammar, requests and the effective policy (pure logic)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awf_kernel.errors import CeilingError, PolicyError
from awf_kernel.policy import (DomainRule, Policy, PolicyRequest, covers, widens, normalize_host, parse_domain,
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
    ("*.a.example.com.", DomainRule("a.example.com", "subdomains")),
    ("123.com", DomainRule("123.com", "exact")), ("0x.example.com", DomainRule("0x.example.com", "exact")),
    ("xn--zca.de", DomainRule("xn--zca.de", "exact")),
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
    ("a.com..", "empty label"), ("*..a.com", "empty label"), ("..com", "not a host"), ("..", "not a host"),
    ("foo.0x10", "IP address"), ("1.2.3.4.5", "IP address"), ("foo.123", "IP address"),
    ("ß.de", "xn--"), ("a\u200db.com", "xn--"), ("exa\u00admple.com", "not a host"),
    ("*.test", "public suffix"), ("*.uk", "public suffix"), ("[a.com]", "not a host"), ("a_b.com", "not a host"),
])
def test_invalid_entries_name_the_entry(entry, why):
    with pytest.raises(PolicyError) as info:
        parse_domain(entry, "notebook metadata awf.allow_domains[3]")
    msg = info.value.message
    assert "awf.allow_domains[3]" in msg
    assert repr(entry) in msg or entry == ""
    assert why.lower() in msg.lower()


def test_error_message_reads_like_the_contract():
    with pytest.raises(PolicyError) as info:
        parse_domains(["a.com", "b.com", "foo bar"], "notebook metadata awf.allow_domains")
    assert info.value.message == ("notebook metadata awf.allow_domains[2]: 'foo bar' is not a host name "
                                  "(whitespace is not allowed)")
    assert str(info.value).endswith("\nHint: " + info.value.hint)


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
    assert isinstance(info.value, PolicyError)
    assert "'evil.com'" in info.value.message and "domain_ceiling" in info.value.message
    assert "/x.ipynb" in info.value.message and "AWFProvisioner.domain_ceiling" in info.value.hint


def test_ceiling_is_checked_per_rule_not_narrowed():
    ceiling = rules("*.example.org")
    ok = resolve_policy(ceiling=ceiling, request=PolicyRequest(allow=rules("a.example.org", "*.b.example.org")))
    assert ok.decide("x.b.example.org").allowed and not ok.decide("example.org").allowed
    with pytest.raises(CeilingError, match="'.example.org'"):  # the apex is outside "*.example.org"
        resolve_policy(ceiling=ceiling, request=PolicyRequest(allow=rules(".example.org")))


def test_admin_allow_is_present_whatever_the_request_and_ceiling():
    policy = resolve_policy(admin_allow=rules("admin.org"), ceiling=(), request=PolicyRequest(source="nb"))
    assert policy.decide("admin.org").allowed and policy.mode == "enforce"


def test_notebook_block_beats_admin_allow():
    policy = resolve_policy(admin_allow=rules(".admin.org"), request=PolicyRequest(block=rules("x.admin.org")))
    assert policy.decide("admin.org").allowed
    decision = policy.decide("X.admin.org.")
    assert (decision.allowed, decision.reason, str(decision.rule)) == (False, "blocked", "x.admin.org")


@pytest.mark.parametrize("host,reason", [
    ("10.0.0.1", "raw-ip"), ("[::1]", "raw-ip"), ("0x7f.1", "raw-ip"), ("fe80::1%eth0", "raw-ip"),
    ("a b", "invalid-host"), ("", "invalid-host"), (None, "invalid-host"), ("a.com..", "invalid-host"),
    ("foo.0x10", "invalid-host"), ("ß.de", "invalid-host"), ("nope.org", "not-allowed"),
])
def test_decide_reasons(host, reason):
    policy = Policy(allow=rules("ok.org"))
    assert policy.decide(host).reason == reason and not policy.decide(host).allowed


def test_explain_tells_the_fix():
    policy = Policy(allow=rules("ok.org"))
    assert policy.decide("Blocked.Test.").explain("Blocked.Test.") == (
        'Blocked.Test. is not in the allowlist; add "blocked.test" to the notebook\'s awf.allow_domains')
    assert policy.decide("ok.org").explain("ok.org") == "ok.org is allowed by ok.org"


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

RENDERED = re.compile(r"[a-z0-9.*-]+")
ascii_labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
idn_labels = st.sampled_from(["bücher", "пример", "例え", "Ünïcödé", "ﬁsh", "Kelvin", "δοκιμή"])
entries = st.builds(
    lambda prefix, labels, parent, dot: prefix + ".".join(labels) + "." + parent + dot,
    st.sampled_from(["", "*.", "."]), st.lists(st.one_of(ascii_labels, idn_labels), min_size=1, max_size=4),
    st.sampled_from(["com", "org", "test", "co.uk", "Example.NET"]), st.sampled_from(["", "."]))


@settings(max_examples=500, deadline=None)
@given(entries)
def test_well_formed_entries_are_accepted_render_safely_and_round_trip(entry):
    rule = parse_domain(entry, "gen")
    assert RENDERED.fullmatch(str(rule)) and len(rule.host) <= 253
    assert parse_domain(str(rule), "again") == rule
    base = entry.lstrip("*.").rstrip(".")
    assert rule.matches(base) is (rule.scope != "subdomains")
    assert rule.matches("www." + base) is (rule.scope != "exact")

SAFE = re.compile(r"(\*\.|\.)?[a-z0-9.-]+")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_refused_or_becomes_a_safe_rule(text):
    try:
        rule = parse_domain(text, "fuzz")
    except PolicyError:
        return
    assert SAFE.fullmatch(str(rule)), rule
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


@pytest.mark.parametrize("host,expected", [
    ("WWW.Example.com.", "www.example.com"), ("bücher.de", "xn--bcher-kva.de"), ("10.0.0.1", None), ("a b", None),
    ("", None), (None, None), ("a.com\n", None), ("a.com.\n", None), ("a.com..", None), ("foo.0x10", None),
    ("ß.de", None), ("[a.com]", None),
])
def test_normalize_host(host, expected):
    assert normalize_host(host) == expected


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet="aZ.0x-\n\r \t:[]ß。", max_size=20)))
def test_normalize_host_yields_only_safe_names(host):
    name = normalize_host(host)
    assert name is None or (re.fullmatch(r"[a-z0-9.-]+", name) and normalize_host(name) == name)


def _ref_matches(pattern: str, host: str) -> bool:
    """Label-by-label reference for the grammar, independent of the implementation."""
    scope = "subdomains" if pattern.startswith("*.") else "both" if pattern.startswith(".") else "exact"
    want = pattern.lstrip("*.").split(".")
    got = host.lower().removesuffix(".").split(".")
    if got[-len(want):] != want or len(got) < len(want):
        return False
    extra = len(got) - len(want)
    return {"exact": extra == 0, "subdomains": extra > 0, "both": True}[scope]


small_labels = st.sampled_from(["a", "b", "ab", "a-b", "0a"])
small_hosts = st.lists(small_labels, min_size=0, max_size=3).map(lambda ls: ".".join(ls + ["test"]))
small_hosts = small_hosts.filter(lambda h: h != "test")
patterns = st.tuples(st.sampled_from(["", "*.", "."]), small_hosts).map("".join)
runtime_hosts = st.tuples(st.lists(small_labels, max_size=4), st.sampled_from(["test", "com"]),
                          st.booleans(), st.booleans()).map(
    lambda t: ".".join(t[0] + [t[1]]).upper() * t[2] + ".".join(t[0] + [t[1]]) * (not t[2]) + "." * t[3])


@settings(max_examples=1000, deadline=None)
@given(patterns, runtime_hosts)
def test_matching_agrees_with_a_reference(pattern, host):
    assert parse_domain(pattern, "p").matches(host) is _ref_matches(pattern, host)


def _witnesses(rule: DomainRule) -> list[str]:
    """Hosts that together exhibit everything `rule` matches ("q0q" is outside small_labels)."""
    return ([rule.host] if rule.scope != "subdomains" else []) + (
        ["q0q." + rule.host] if rule.scope != "exact" else [])


@settings(max_examples=1000, deadline=None)
@given(patterns, patterns, runtime_hosts)
def test_covers_is_sound_and_complete(outer_text, inner_text, probe):
    outer, inner = parse_domain(outer_text, "o"), parse_domain(inner_text, "i")
    assert covers(outer, inner) is all(outer.matches(w) for w in _witnesses(inner))
    if covers(outer, inner) and inner.matches(probe):
        assert outer.matches(probe)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), runtime_hosts, st.just("fe80::1%\nx")))
def test_decisions_explain_in_one_line(host):
    for policy in (Policy(), Policy(allow=rules("a.test")), Policy(block=rules(".a.test"), allow_all=True)):
        decision = policy.decide(host)
        assert decision.reason in ("allowed", "not-allowed", "blocked", "raw-ip", "invalid-host")
        assert len(decision.explain(host).splitlines()) == 1


def _pol(allow=(), block=(), mode="enforce", allow_all=False):
    return Policy(allow=parse_domains(list(allow), "allow"), block=parse_domains(list(block), "block"),
                  mode=mode, allow_all=allow_all)


@pytest.mark.parametrize("old,new,expected", [
    (_pol(["a.test"]), _pol(["a.test", "b.test"]), True),            # one more host
    (_pol(["api.a.test"]), _pol(["*.a.test"]), True),                # a wildcard covers the old name
    (_pol(["a.test"]), _pol(["a.test"]), True),                      # the same
    (_pol(), _pol(["a.test"]), True),                                # deny-all, then something
    (_pol(["a.test", "b.test"]), _pol(["a.test"]), False),           # one host fewer
    (_pol(["*.a.test"]), _pol(["api.a.test"]), False),               # a wildcard narrowed
    (_pol(["*.a.test"]), _pol(["*.a.test", "b.test"], block=["x.a.test"]), False),  # a new block
    (_pol(["a.test"], block=["x.test"]), _pol(["a.test"]), False),   # a block dropped: not judged, applied first
    (_pol(["a.test"]), _pol(["a.test"], mode="record"), False),      # another mode
    (_pol(mode="record", allow_all=True), _pol(["a.test"], mode="record"), False),  # record without a ceiling lost
])
def test_widens_only_when_every_host_allowed_before_still_is(old, new, expected):
    """A restart may start the kernel while the new policy goes in force only
    when the old one is no wider (provisioner._start_beside_policy)."""
    assert widens(old, new) is expected
    if expected:
        for host in ("a.test", "api.a.test", "b.test", "x.test", "x.a.test"):
            assert not old.decide(host).allowed or new.decide(host).allowed, host
