"""Rendered configuration: whole outputs against golden files, plus the
properties that make them safe (order of rules, nothing but validated hosts)."""

from __future__ import annotations

import json
import pathlib

import pytest

from awf_kernel.policy import Policy, parse_domains
from awf_kernel.render import firewall, pod, resolver, squid

DATA = pathlib.Path(__file__).parent.parent / "data"


def policy(allow=(), block=(), mode="enforce"):
    return Policy(allow=parse_domains(list(allow), "test"), block=parse_domains(list(block), "test"), mode=mode)


def golden(name: str, text: str):
    path = DATA / name
    if not path.exists():  # first run writes it; review it in the diff
        path.write_text(text)
    assert text == path.read_text()


def test_squid_conf_golden():
    golden("squid.conf", squid.render_squid_conf(
        policy(["allowed.test", "*.api.test", ".both.test"], ["bad.allowed.test"]), kernel_id="k-1"))


def test_squid_denies_before_it_allows():
    conf = squid.render_squid_conf(policy(["a.test"], ["b.test"]), kernel_id="k")
    access = [l for l in conf.splitlines() if l.startswith("http_access")]
    assert access[-1] == "http_access deny all"
    allow_i = access.index("http_access allow awf_allow")
    for deny in ("awf_block", "raw_ip", "!web_ports", "to_localhost", "to_linklocal"):
        assert access.index(f"http_access deny {deny}") < allow_i
    bump = [l for l in conf.splitlines() if l.startswith("ssl_bump")]
    assert bump[0] == "ssl_bump peek step1" and bump[-1] == "ssl_bump terminate all"
    assert bump.index("ssl_bump terminate awf_block_sni") < bump.index("ssl_bump splice awf_allow_sni")
    assert "host_verify_strict on" in conf and "client_dst_passthru off" in conf
    assert not [l for l in bump if l.split()[1] in ("bump", "stare", "client-first", "server-first")]


def test_squid_empty_policy_still_parses_and_denies():
    conf = squid.render_squid_conf(policy(), kernel_id="k")
    assert "acl awf_allow dstdom_regex -n -i ^awf-empty-acl\\.invalid$" in conf


@pytest.mark.parametrize("entry,regex", [
    ("a.test", r"^a\.test\.?$"),
    ("*.a.test", r"\.a\.test\.?$"),
    (".a.test", r"(^|\.)a\.test\.?$"),
])
def test_host_regex(entry, regex):
    (rule,) = parse_domains([entry], "test")
    assert squid.host_regex(rule) == regex


def test_firewall_golden():
    golden("ipv4.rules", firewall.render_ipv4_rules(kernel_ports=[5001, 5002, 5003, 5004, 5005],
                                                    server_address="172.30.0.1", host_addresses=["172.30.0.1"],
                                                    dns_upstreams=["172.30.0.53"], allowed_private=["10.20.0.0/16"]))
    golden("ipv6.rules", firewall.render_ipv6_rules())


def test_firewall_default_deny_is_last_and_proxy_only_leaves():
    rules = firewall.render_ipv4_rules(kernel_ports=[1, 2, 3, 4, 5])
    out = [l for l in rules.splitlines() if l.startswith("-A AWF_OUTPUT") and "REDIRECT" not in l and "RETURN" not in l]
    assert out[-1] == "-A AWF_OUTPUT -j REJECT --reject-with icmp-admin-prohibited"
    leaving = [l for l in out if "@EGRESS_IF@" in l]
    assert leaving and all("--uid-owner 13" in l for l in leaving)
    assert not any("DROP" in l for l in out)  # rejections fail fast
    assert "-I OUTPUT 1 -j AWF_OUTPUT" in rules and "-F" not in rules.split()


def test_firewall_needs_kernel_ports():
    with pytest.raises(ValueError):
        firewall.render_ipv4_rules(kernel_ports=[])


def test_resolver_config():
    cfg = json.loads(resolver.render_resolver_config(policy(["a.test", "*.b.test"], [".c.test"]),
                                                     kernel_id="k", upstreams=["10.9.8.7"]))
    assert cfg["allow"] == {"exact": ["a.test"], "subdomains": ["b.test"], "both": []}
    assert cfg["block"] == {"exact": [], "subdomains": [], "both": ["c.test"]}
    assert cfg["upstreams"] == ["10.9.8.7"] and cfg["allow_all"] is False


def _settings(**kw):
    base = dict(kernel_id="0123456789abcdef", proxy_image="p", kernel_image="k", kernel_cmd=("python3",),
                kernel_ports=(1, 2, 3, 4, 5), network="net", uid=1000, gid=1000, connection_dir="/tmp/c",
                audit_dir="/tmp/a", workdir="/home/u/nb")
    base.update(kw)
    return pod.PodSettings(**base)


def test_kernel_container_is_locked_down():
    spec = pod.kernel_create_kwargs(_settings(env={"LANG": "C"}), "proxyid")
    assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec
    assert spec["security_opt"] == ["no-new-privileges"] and spec["init"] is True
    assert spec["user"] == "1000:1000" and spec["network_mode"] == "container:proxyid"
    assert "ports" not in spec and "privileged" not in spec
    assert {m["Target"]: m["ReadOnly"] for m in spec["mounts"]} == {
        pod.CONNECTION_FILE: False, "/home/u/nb": False, pod.AUDIT_DIR_IN_KERNEL: True}
    assert spec["read_only"] is True and spec["tmpfs"] == {"/tmp": "mode=1777,size=512m"}
    assert spec["log_config"]["config"]["max-size"]
    assert spec["working_dir"] == "/home/u/nb"
    assert spec["labels"]["io.awf-kernel.kernel-id"] == "0123456789abcdef"
    assert spec["environment"]["LANG"] == "C" and "JPY_PARENT_PID" not in spec["environment"]


def test_proxy_publishes_on_loopback_only_and_has_no_capabilities():
    spec = pod.proxy_create_kwargs(_settings())
    assert set(spec["ports"].values()) == {("127.0.0.1", p) for p in (1, 2, 3, 4, 5)}
    assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec and "user" not in spec  # image USER proxy
    # port 53 stays privileged in the pod's namespace: the kernel shares it
    assert spec["sysctls"]["net.ipv4.ip_unprivileged_port_start"] == "1024"
    assert spec["log_config"]["config"]["max-size"]


def test_firewall_step_holds_only_net_admin():
    spec = pod.firewall_create_kwargs(_settings(), "proxyid", {"A": "b"})
    assert spec["cap_drop"] == ["ALL"] and set(spec["cap_add"]) <= {"NET_ADMIN", "NET_RAW"}
    assert spec["network_mode"] == "container:proxyid"


def _rules(**kw):
    args = dict(kernel_ports=[1, 2, 3, 4, 5], server_address="172.30.0.1", host_addresses=["172.30.0.1"])
    args.update(kw)
    return firewall.render_ipv4_rules(**args).splitlines()


def test_only_the_server_side_opens_the_kernel_ports():
    inbound = [l for l in _rules() if l.startswith("-A AWF_INPUT") and "ACCEPT" in l and "--dports" in l]
    assert inbound == ["-A AWF_INPUT -i @INGRESS_IF@ -s 172.30.0.1 -p tcp -m multiport --dports 1,2,3,4,5 -j ACCEPT"]


def test_proxy_never_reaches_non_global_addresses_unless_opted_in():
    rules = _rules(allowed_private=["10.20.0.0/16"], dns_upstreams=["10.9.9.9"])
    web_accept = rules.index("-A AWF_OUTPUT -m owner --uid-owner 13 -o @EGRESS_IF@ -p tcp -m multiport"
                             " --dports 80,443 -j ACCEPT")
    rejected = {l.split(" -d ")[1].split()[0] for l in rules[:web_accept] if "--uid-owner 13 -d" in l and "REJECT" in l}
    from awf_kernel import addresses
    assert set(addresses.NON_GLOBAL_V4) <= rejected and "172.30.0.1/32" in rejected
    opt_in = [i for i, l in enumerate(rules) if "-d 10.20.0.0/16" in l]
    dns = [i for i, l in enumerate(rules) if "-d 10.9.9.9/32" in l]
    first_reject = min(i for i, l in enumerate(rules) if "-d 10.0.0.0/8" in l)
    assert opt_in and all(i < first_reject for i in opt_in) and "--dports 80,443" in rules[opt_in[0]]
    assert len(dns) == 2 and all(i < first_reject and "--dport 53" in rules[i] for i in dns)
    # the Docker host's address is refused before any opt-in could admit it
    host = rules.index("-A AWF_OUTPUT -m owner --uid-owner 13 -d 172.30.0.1/32 -j REJECT"
                       " --reject-with icmp-admin-prohibited")
    assert host < opt_in[0]


def test_upstreams_left_to_the_init_step_when_none_named():
    rules = _rules()
    assert sum("@UPSTREAM@" in l for l in rules) == 2
    assert not any("@UPSTREAM@" in l for l in _rules(dns_upstreams=["10.9.9.9"]))


def test_kernel_cannot_reach_proxy_sockets_on_loopback():
    rules = _rules()
    out = [l for l in rules if l.startswith("-A AWF_OUTPUT")]
    # UDP on loopback only after a REDIRECT (to the resolver); the internal
    # ports only through the REDIRECTs; no rule accepts port 53 on loopback
    # without redirecting it to the resolver's unprivileged port.
    assert "-A AWF_OUTPUT -d 127.0.0.1/32 -m conntrack --ctstate DNAT -j ACCEPT" in out
    internal = out.index("-A AWF_OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 3129,3130,5353"
                         " -j REJECT --reject-with tcp-reset")
    assert internal < out.index("-A AWF_OUTPUT -d 127.0.0.1/32 -p tcp -j ACCEPT")
    loopback_accepts = [l for l in out if "127.0.0" in l and l.endswith("ACCEPT")]
    assert all("--uid-owner 13" in l or "-p tcp" in l or "DNAT" in l for l in loopback_accepts)
    nat = rules[:rules.index("COMMIT")]
    assert "-A AWF_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 5353" in nat
    assert "-A AWF_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 5353" in nat


def test_squid_denies_non_global_destinations_before_allowing():
    conf = squid.render_squid_conf(policy(["a.test"]), kernel_id="k", allowed_private=["10.20.0.0/16"])
    access = [l for l in conf.splitlines() if l.startswith("http_access")]
    deny = access.index("http_access deny to_non_global !to_allowed_private")
    assert deny < access.index("http_access allow CONNECT https_intercept") \
        < access.index("http_access allow awf_allow")
    assert "acl to_allowed_private dst 10.20.0.0/16" in conf
    from awf_kernel import addresses
    assert ("acl to_non_global dst " + " ".join(addresses.NON_GLOBAL_V4)) in conf


def test_route_out_comes_from_the_endpoint_and_fails_loudly():
    from awf_kernel.errors import SandboxStartError
    from awf_kernel.sandbox.docker import EgressNetwork, Endpoint, route_out

    # Debian's docker.io 20.10: the bridge's IPAM config lists no gateway, the endpoint does
    bridge = EgressNetwork("bridge", internal=False, subnets=("172.17.0.0/16",), host_addresses=())
    assert route_out(bridge, Endpoint("172.17.0.2", "172.17.0.1")) == "172.17.0.1"
    internal = EgressNetwork("lab", internal=True, subnets=(), host_addresses=())
    assert route_out(internal, Endpoint("10.1.0.2", "10.1.0.1")) is None
    with pytest.raises(SandboxStartError, match="no gateway") as err:
        route_out(bridge, Endpoint("172.17.0.2", None))
    assert "docker network inspect bridge" in str(err.value)


def test_the_docker_hosts_own_addresses_come_from_fib_trie():
    from awf_kernel.sandbox.docker import parse_local_addresses

    trie = """Main:
  +-- 0.0.0.0/0 3 0 4
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 172.17.0.0
           /16 link UNICAST
        |-- 172.17.0.1
           /32 host LOCAL
        |-- 172.17.255.255
           /32 link BROADCAST
        |-- 203.0.113.7
           /32 host LOCAL
Local:
        |-- 172.17.0.1
           /32 host LOCAL
"""
    assert parse_local_addresses(trie) == ["172.17.0.1", "203.0.113.7"]
