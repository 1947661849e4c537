"""The pod's resolver (containers/proxy/resolver.py) runs where awf_kernel is
not installed, so it repeats the matching and the reachability rule: check
they agree with policy.py and addresses.py, that it answers denied and
malformed queries itself without forwarding, and what it sends back. The log
reader both `awf-kernel logs` and the in-kernel notice use
(kernel_side/awf_records.py) decides from policy.json alone: it must agree too.

tests/unit/test_resolver_network.py runs it against a fake upstream."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import pathlib

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awf_kernel.addresses import NON_GLOBAL_V4, is_reachable, parse_private_destinations
from awf_kernel.kernel_side import awf_records
from awf_kernel.policy import Policy, parse_domains
from awf_kernel.render import ports
from awf_kernel.render.resolver import render_resolver_config

RESOLVER = pathlib.Path(__file__).parents[2] / "containers" / "proxy" / "resolver.py"
spec = importlib.util.spec_from_file_location("awf_pod_resolver", RESOLVER)
resolver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resolver)

labels = st.sampled_from(["a", "b", "api", "x-y", "test", "allowed", "evil"])
hosts = st.lists(labels, min_size=2, max_size=4).map(".".join)
entries = st.tuples(st.sampled_from(["", "*.", "."]), hosts).map("".join)


def config_for(policy: Policy, **kw) -> dict:
    return json.loads(render_resolver_config(policy, kernel_id="k", upstreams=["192.0.2.1"], **kw))


@settings(max_examples=300, deadline=None)
@given(allow=st.lists(entries, max_size=4), block=st.lists(entries, max_size=2), host=hosts)
def test_resolver_agrees_with_policy(allow, block, host):
    try:
        policy = Policy(allow=parse_domains(allow, "t"), block=parse_domains(block, "t"))
    except Exception:  # noqa: BLE001 - generated public suffixes are refused; not what this tests
        return
    allowed, _, _ = resolver.decide(config_for(policy), host)
    assert allowed == policy.decide(host).allowed
    assert_records_agree(policy, host)


def assert_records_agree(policy: Policy, host: str) -> None:
    """awf_records.decide on what policy.json records == Policy.decide."""
    recorded = json.loads(json.dumps({**policy.to_json(), "allow_all": policy.allow_all}))
    expected = policy.decide(host)
    assert awf_records.decide(recorded, host) == (expected.allowed, expected.reason,
                                                  None if expected.rule is None else str(expected.rule))


# Hosts as logs carry them: names in any case, with a trailing dot, malformed,
# IPs in every form a socket accepts, escaped (safe_text) hostile names.
odd_hosts = st.sampled_from([
    "127.0.0.1", "127.1", "0x7f.1", "0x7f000001", "2130706433", "017700000001", "1.2.3.4.", "[::1]", "::ffff:1.2.3.4",
    "[fe80::1]", "a.123", "a.0x1f", "A.B.", "api.ALLOWED.test.", "a..b", "-a.test", "a-.test", "x_y.test", "",
    ".", "..", "localhost", "a.b\\x0a", "pyp\\u0456.org", "xn--bcher-kva.test", "*.a.b", "a b.test", "a" * 64 + ".b",
])


@settings(max_examples=500, deadline=None)
@given(allow=st.lists(entries, max_size=4), block=st.lists(entries, max_size=2), host=hosts | odd_hosts,
       record_all=st.booleans())
def test_log_reader_agrees_with_policy(allow, block, host, record_all):
    try:
        policy = Policy(allow=parse_domains(allow, "t"), block=parse_domains(block, "t"), allow_all=record_all)
    except Exception:  # noqa: BLE001 - generated public suffixes are refused; not what this tests
        return
    assert_records_agree(policy, host)
    assert awf_records.is_ip_literal(host) == (policy.decide(host).reason == "raw-ip")


def test_config_carries_the_one_non_global_list_and_the_listen_port():
    cfg = config_for(Policy(), allowed_private=["10.20.0.0/16"])
    assert cfg["non_global"] == list(NON_GLOBAL_V4)
    assert cfg["allowed_private"] == ["10.20.0.0/16"]
    assert cfg["port"] == ports.RESOLVER_LISTEN and cfg["listen"] == "127.0.0.1"
    assert config_for(Policy())["allowed_private"] == []


def test_config_refuses_private_ranges_no_pod_may_reach():
    import pytest

    from awf_kernel.addresses import DestinationError
    for bad in (["127.0.0.0/8"], ["169.254.169.254/32"], ["not-a-net"], ["fd00::/8"]):
        with pytest.raises(DestinationError):
            config_for(Policy(), allowed_private=bad)


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
private_nets = st.lists(st.sampled_from(["10.0.0.0/8", "10.20.0.0/16", "172.16.0.0/12", "192.168.1.0/24",
                                         "100.64.0.0/10", "8.8.8.0/24"]), max_size=3)


@settings(max_examples=500, deadline=None)
@given(address=ipv4 | st.sampled_from(["10.1.2.3", "127.0.0.1", "169.254.169.254", "172.17.0.1",
                                       "192.168.1.5", "100.64.0.1", "0.0.0.0", "224.0.0.1"]),
       allowed=private_nets)
def test_resolver_reachability_agrees_with_addresses(address, allowed):
    r = Offline(config_for(Policy(), allowed_private=allowed))
    assert r.reachable(address) == is_reachable(address, parse_private_destinations(allowed))


def test_reachability_without_non_global_key_falls_back_to_is_global():
    r = Offline({**config_for(Policy()), "non_global": None})
    r.non_global = None
    assert not r.reachable("10.0.0.1") and r.reachable("93.184.216.34")


# -- answering without a network ------------------------------------------------


class Offline(resolver.Resolver):
    """The real resolver, with `forward` answered from a table instead of a network."""

    def __init__(self, config, answers=None):
        super().__init__({**config, "log": None})
        self.forwarded = []
        self.answers = answers or {}

    def forward(self, name, qtype):
        self.forwarded.append((name, qtype))
        query = dns.message.make_query(name, qtype)
        reply = dns.message.make_response(query)
        for rrset in self.answers.get((name, qtype), ()):
            reply.answer.append(rrset)
        return reply


def _query(name: str, qtype="A", ident: int = 0x1234, **kw) -> bytes:
    q = dns.message.make_query(name, qtype, **kw)
    q.id = ident
    return q.to_wire()


def _raw_query(labels: list[bytes], qtype: int = 1, ident: int = 0x1234) -> bytes:
    q = ident.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(l)]) + l for l in labels) + b"\0"
    return q + qtype.to_bytes(2, "big") + b"\x00\x01"


def allowed_resolver(**kw):
    return Offline(config_for(Policy(allow=parse_domains([".allowed.test"], "t")), **kw.pop("cfg", {})), **kw)


def test_denied_names_get_nxdomain_without_forwarding():
    r = allowed_resolver()
    reply = dns.message.from_wire(r.answer(_query("secret.blocked.test"), "127.0.0.1"))
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.NXDOMAIN
    assert r.forwarded == []
    r.answer(_query("ALLOWED.test"), "127.0.0.1")
    assert r.forwarded == [("allowed.test", dns.rdatatype.A)]


def test_malformed_queries_are_not_forwarded():
    r = allowed_resolver()
    good = _query("allowed.test")
    two_questions = good[:4] + b"\x00\x02" + good[6:]
    pointer = good[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with_answer = dns.message.make_query("allowed.test", "A")
    with_answer.answer.append(dns.rrset.from_text("allowed.test.", 60, "IN", "A", "192.0.2.1"))
    with_additional = dns.message.make_query("allowed.test", "A")
    with_additional.additional.append(dns.rrset.from_text("x.test.", 60, "IN", "A", "192.0.2.1"))
    update = dns.message.make_query("allowed.test", "A")
    update.set_opcode(2)  # STATUS
    bad = {
        b"": None, b"\x00" * 5: None, good[:-3]: dns.rcode.FORMERR, two_questions: dns.rcode.FORMERR,
        pointer: dns.rcode.FORMERR, good + b"junk": dns.rcode.FORMERR,
        with_answer.to_wire(): dns.rcode.FORMERR, with_additional.to_wire(): dns.rcode.FORMERR,
        update.to_wire(): dns.rcode.NOTIMP,
        _query("allowed.test", "ANY"): dns.rcode.REFUSED, _query("allowed.test", "AXFR"): dns.rcode.REFUSED,
        _query("allowed.test", "A", rdclass="CH"): dns.rcode.REFUSED,
        _raw_query([b"allowed", b"test"], qtype=0xFFFF): dns.rcode.REFUSED,
        _raw_query([b"x\nhost", b"allowed", b"test"]): dns.rcode.NXDOMAIN,
        _raw_query([b"_dmarc", b"allowed", b"test"]): dns.rcode.NXDOMAIN,
        _raw_query([b"-x", b"allowed", b"test"]): dns.rcode.NXDOMAIN,
        _raw_query([b"a" * 64, b"allowed", b"test"]): dns.rcode.FORMERR,  # dnspython: label too long
        _raw_query([b"a" * 63] * 3 + [b"a" * 49, b"allowed", b"test"]): dns.rcode.FORMERR,  # 254 > 253
        _raw_query([]): dns.rcode.NXDOMAIN, _raw_query([b"allowed", b"123"]): dns.rcode.NXDOMAIN,
    }
    for packet, rcode in bad.items():
        out = r.answer(packet, "127.0.0.1")
        if rcode is None:
            assert out is None, packet
        else:
            reply = dns.message.from_wire(out)
            assert reply.rcode() == rcode, (packet, dns.rcode.to_text(reply.rcode()))
            assert reply.flags & dns.flags.QR and reply.id == int.from_bytes(packet[:2], "big")
    assert r.forwarded == []


def test_longest_name_is_accepted():
    name = dns.name.from_wire(_raw_query([b"a" * 63] * 3 + [b"a" * 48, b"allowed", b"test"]), 12)[0]
    assert len(resolver.validate_name(name)) == 253


def test_responses_are_never_answered():
    r = allowed_resolver()
    reply = dns.message.make_response(dns.message.make_query("allowed.test", "A"))
    assert r.answer(reply.to_wire(), "127.0.0.1") is None
    assert r.answer(b"\x12\x34\x80" + b"\xff" * 20, "127.0.0.1") is None
    assert r.forwarded == []


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet=st.binary(max_size=600))
def test_random_bytes_never_crash_and_never_forward(packet):
    r = allowed_resolver()
    out = r._answer(packet, "127.0.0.1", "udp")  # the unguarded path: no exception may escape it
    assert r.forwarded == []
    if out is not None:
        reply = dns.message.from_wire(out)
        assert reply.flags & dns.flags.QR and reply.id == int.from_bytes(packet[:2], "big")
        assert len(out) <= 512


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 80))
def test_mutated_queries_never_crash(edits, cut):
    packet = bytearray(_query("www.allowed.test", use_edns=0))
    for pos, value in edits:
        if pos < len(packet):
            packet[pos] = value
    packet = bytes(packet[:len(packet) - cut] if cut < 40 else packet)
    r = allowed_resolver()
    r._answer(packet, "127.0.0.1", "udp")
    for name, _ in r.forwarded:  # only a validated, allowed name may ever be forwarded
        assert resolver.decide(r.config, name)[0] and resolver.LABEL.fullmatch(name.split(".")[0].encode())


def _a(name, *addresses, ttl=60):
    return dns.rrset.from_text(name, ttl, "IN", "A", *addresses)


def _addresses(out: bytes) -> list[str]:
    reply = dns.message.from_wire(out)
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype in (1, 28))


def test_private_addresses_are_dropped_unless_allowed(tmp_path):
    table = {("www.allowed.test", 1): [_a("www.allowed.test.", "10.1.2.3", "93.184.216.34", "127.0.0.1",
                                          "169.254.169.254", "172.17.0.1")],
             ("in.allowed.test", 1): [_a("in.allowed.test.", "10.1.2.3", "192.168.0.9")]}
    r = allowed_resolver(answers=table, cfg={})
    assert _addresses(r.answer(_query("www.allowed.test"), "c")) == ["93.184.216.34"]
    reply = dns.message.from_wire(r.answer(_query("in.allowed.test"), "c"))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []

    r = allowed_resolver(answers=table, cfg={"allowed_private": ["10.0.0.0/8"]})
    assert _addresses(r.answer(_query("www.allowed.test"), "c")) == ["10.1.2.3", "93.184.216.34"]
    assert _addresses(r.answer(_query("in.allowed.test"), "c")) == ["10.1.2.3"]

    # loopback and link-local never pass, even from a config that lists them
    r = allowed_resolver(answers=table)
    r.allowed_private = resolver.networks(["0.0.0.0/0"])
    assert _addresses(r.answer(_query("www.allowed.test"), "c")) == [
        "10.1.2.3", "172.17.0.1", "93.184.216.34"]


def test_private_address_is_logged(tmp_path):
    log = tmp_path / "dns.jsonl"
    table = {("in.allowed.test", 1): [_a("in.allowed.test.", "10.1.2.3")],
             ("www.allowed.test", 1): [_a("www.allowed.test.", "10.1.2.3", "93.184.216.34")]}
    r = allowed_resolver(answers=table, cfg={})
    r.log_path, r.log_file = str(log), open(log, "a", buffering=1)
    r.answer(_query("in.allowed.test"), "127.0.0.1")
    r.answer(_query("www.allowed.test"), "127.0.0.1")
    r.close()
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["reason"] == "private-address" and first["decision"] == "denied"
    assert first["answers"] == [] and first["dropped"] == ["10.1.2.3"]
    assert second["reason"] == "allowed" and second["answers"] == ["93.184.216.34"]
    assert second["dropped"] == ["10.1.2.3"]


def test_cname_chain_kept_aaaa_and_off_chain_records_dropped():
    table = {
        ("www.allowed.test", 1): [
            dns.rrset.from_text("www.allowed.test.", 60, "IN", "CNAME", "cdn.example.net."),
            _a("cdn.example.net.", "93.184.216.34"),
            _a("unrelated.example.org.", "93.184.216.35"),       # not on the chain
            dns.rrset.from_text("cdn.example.net.", 60, "IN", "TXT", '"x"'),  # not the qtype
        ],
        ("www.allowed.test", 28): [dns.rrset.from_text("www.allowed.test.", 60, "IN", "AAAA", "::ffff:10.0.0.1")],
    }
    r = allowed_resolver(answers=table)
    reply = dns.message.from_wire(r.answer(_query("www.allowed.test"), "c"))
    assert [(str(x.name), x.rdtype) for x in reply.answer] == [("www.allowed.test.", 5), ("cdn.example.net.", 1)]
    reply = dns.message.from_wire(r.answer(_query("www.allowed.test", "AAAA"), "c"))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_https_records_lose_their_address_hints():
    rr = dns.rrset.from_text("allowed.test.", 60, "IN", "HTTPS",
                             '1 . alpn="h2" ipv4hint="10.0.0.1" ipv6hint="::1"',
                             '2 . mandatory="ipv4hint" ipv4hint="10.0.0.1"', '3 . alpn="h3"')
    r = allowed_resolver(answers={("allowed.test", 65): [rr]})
    reply = dns.message.from_wire(r.answer(_query("allowed.test", "HTTPS"), "c"))
    texts = sorted(rd.to_text() for rd in reply.answer[0])
    assert texts == ['1 . alpn="h2"', '3 . alpn="h3"']


def test_reply_echoes_only_the_clients_validated_question():
    r = allowed_resolver(answers={("www.allowed.test", 1): [_a("www.allowed.test.", "93.184.216.34")]})
    query = dns.message.make_query("WwW.AllOwed.TEST", "A", use_edns=0, payload=4096)
    query.id = 4321
    reply = dns.message.from_wire(r.answer(query.to_wire(), "c"))
    assert reply.id == 4321 and str(reply.question[0].name) == "WwW.AllOwed.TEST."
    assert reply.flags & dns.flags.RD and reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert reply.additional == [] and reply.edns == 0 and reply.payload == resolver.CLIENT_PAYLOAD_MAX
    # no EDNS from the client: none back
    assert dns.message.from_wire(r.answer(_query("www.allowed.test"), "c")).edns == -1


def test_big_answers_are_truncated_for_udp_but_not_tcp():
    many = _a("big.allowed.test.", *[f"93.184.{i}.{j}" for i in range(2) for j in range(1, 60)])
    r = allowed_resolver(answers={("big.allowed.test", 1): [many]})
    udp = dns.message.from_wire(r.answer(_query("big.allowed.test"), "c", "udp"))
    assert udp.flags & dns.flags.TC and udp.answer == []
    tcp = dns.message.from_wire(r.answer(_query("big.allowed.test"), "c", "tcp"))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 118


weird_label = st.binary(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.lists(weird_label, min_size=1, max_size=3), qtype=st.sampled_from([1, 28, 16, 255, 65]))
def test_log_lines_are_json_and_hosts_plain(tmp_path, prefix, qtype):
    log = tmp_path / "dns.jsonl"
    r = allowed_resolver(answers={})
    r.log_path, r.log_file = str(log), open(log, "w", buffering=1)
    try:
        r.answer(_raw_query(prefix + [b"allowed", b"test"], qtype=qtype), "127.0.0.1")
        r.answer(_raw_query(prefix + [b"other", b"test"], qtype=qtype), "127.0.0.1")
    finally:
        r.log_file.close()
    raw = log.read_bytes()
    assert all(b >= 0x20 or b == 0x0A for b in raw) and raw.isascii()
    for line in raw.decode().splitlines():
        entry = json.loads(line)
        host = entry["host"]
        assert host is None or (resolver.validate_name(dns.message.from_wire(
            _query(host)).question[0].name) == host)
        assert entry["kind"] == "dns" and entry["port"] == 53
