"""The pod's resolver (containers/proxy/resolver.py) runs where awf_kernel is
not installed, so it repeats the matching: check it agrees with policy.py,
and that it answers denied names itself without forwarding."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from awf_kernel.policy import Policy, parse_domains
from awf_kernel.render.resolver import render_resolver_config

RESOLVER = pathlib.Path(__file__).parents[2] / "containers" / "proxy" / "resolver.py"
spec = importlib.util.spec_from_file_location("awf_pod_resolver", RESOLVER)
resolver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resolver)

labels = st.sampled_from(["a", "b", "api", "x-y", "test", "allowed", "evil"])
hosts = st.lists(labels, min_size=2, max_size=4).map(".".join)
entries = st.tuples(st.sampled_from(["", "*.", "."]), hosts).map("".join)


def config_for(policy: Policy) -> dict:
    return json.loads(render_resolver_config(policy, kernel_id="k", upstreams=["192.0.2.1"]))


@settings(max_examples=300, deadline=None)
@given(allow=st.lists(entries, max_size=4), block=st.lists(entries, max_size=2), host=hosts)
def test_resolver_agrees_with_policy(allow, block, host):
    try:
        policy = Policy(allow=parse_domains(allow, "t"), block=parse_domains(block, "t"))
    except Exception:  # noqa: BLE001 - generated public suffixes are refused; not what this tests
        return
    allowed, _, _ = resolver.decide(config_for(policy), host)
    assert allowed == policy.decide(host).allowed


def _query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return q + struct.pack("!HH", qtype, 1)


class NoNetwork(resolver.Resolver):
    def __init__(self, config):
        super().__init__({**config, "log": None})
        self.forwarded = []

    def forward(self, packet):
        self.forwarded.append(packet)
        return packet[:2] + b"\x81\x80" + packet[4:]


def test_denied_names_get_nxdomain_without_forwarding():
    r = NoNetwork(config_for(Policy(allow=parse_domains(["allowed.test"], "t")))) 
    reply = r.answer(_query("secret.blocked.test"), "127.0.0.1")
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 3
    assert r.forwarded == []
    r.answer(_query("ALLOWED.test"), "127.0.0.1")
    assert len(r.forwarded) == 1


def test_malformed_queries_are_not_forwarded():
    r = NoNetwork(config_for(Policy(allow=parse_domains(["allowed.test"], "t"))))
    bad = [b"", b"\x00" * 5, _query("allowed.test")[:-3], _query("allowed.test")[:4] + b"\x00\x02" + _query("allowed.test")[6:],
           _query("allowed.test")[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"]
    for packet in bad:
        r.answer(packet, "127.0.0.1")
    assert r.forwarded == []
