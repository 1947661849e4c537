"""The routed wiring's pure parts (render/link.py): what a kernel under a
runtime with its own network stack gets instead of the proxy's namespace,
the proxy side that serves it, and the rules that judge what crosses the link."""

from __future__ import annotations

import pytest

from awf_kernel.render import firewall, link
from awf_kernel.render import pod as podspec
from tests.unit.test_render import _settings


def routed(**kw):
    return _settings(routed=True, runtime="runsc", **kw)


def test_kernel_joins_the_holder_and_reaches_the_proxy_at_the_link():
    spec = podspec.kernel_create_kwargs(routed(), "holderid")
    assert spec["network_mode"] == "container:holderid" and spec["runtime"] == "runsc"
    assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec
    env = spec["environment"]
    assert env["HTTP_PROXY"] == env["https_proxy"] == f"http://{link.PROXY_ADDRESS}:3128"
    mounts = {m["Target"]: m for m in spec["mounts"]}
    assert mounts["/etc/resolv.conf"] == {"Type": "bind", "Source": "/tmp/c/resolv.conf",
                                          "Target": "/etc/resolv.conf", "ReadOnly": True}
    assert podspec.resolv_conf(routed()).splitlines()[1] == f"nameserver {link.PROXY_ADDRESS}"


def test_unrouted_kernel_is_unchanged():
    spec = podspec.kernel_create_kwargs(_settings(), "proxyid")
    assert spec["environment"]["HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert "/etc/resolv.conf" not in {m["Target"] for m in spec["mounts"]}
    proxy = podspec.proxy_create_kwargs(_settings())
    assert "environment" not in proxy
    assert "net.ipv4.ip_forward" not in proxy["sysctls"] and "net.ipv4.ip_nonlocal_bind" not in proxy["sysctls"]
    assert "pid_mode" not in podspec.firewall_create_kwargs(_settings(), "proxyid", {})


def test_holder_is_nobody_with_no_capability_and_no_network():
    spec = podspec.holder_create_kwargs(routed())
    assert spec["network_mode"] == "none" and spec["user"] == "65534:65534"
    assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec
    assert spec["security_opt"] == ["no-new-privileges"] and "runtime" not in spec  # the engine's runc
    assert spec["labels"]["io.awf-kernel.role"] == "holder"


def test_one_shot_steps_hold_net_admin_only():
    fw = podspec.firewall_create_kwargs(routed(), "proxyid", {}, "holderid")
    assert fw["network_mode"] == "container:proxyid" and fw["pid_mode"] == "container:holderid"
    step = podspec.link_create_kwargs(routed(), "holderid")
    assert step["network_mode"] == "container:holderid" and "pid_mode" not in step
    assert step["cap_drop"] == ["ALL"] and step["cap_add"] == ["NET_ADMIN"]
    assert step["environment"]["AWF_LINK_GATEWAY"] == link.PROXY_ADDRESS
    assert "runtime" not in fw and "runtime" not in step


def test_proxy_forwards_and_binds_the_link_only_when_routed():
    spec = podspec.proxy_create_kwargs(routed())
    assert spec["sysctls"]["net.ipv4.ip_forward"] == "1" and spec["sysctls"]["net.ipv4.ip_nonlocal_bind"] == "1"
    assert spec["environment"] == {"AWF_LINK_ADDRESS": link.PROXY_ADDRESS}


def _rules(routed_: bool) -> list[str]:
    return firewall.render_ipv4_rules(kernel_ports=[1, 2, 3, 4, 5], server_address="172.30.0.1",
                                      routed=routed_).splitlines()


def test_routed_rules_redirect_web_and_dns_from_the_link_and_refuse_the_rest():
    rules = _rules(True)
    pre = [r for r in rules if r.startswith("-A AWF_PREROUTING")]
    assert pre[:5] == [
        f"-A AWF_PREROUTING -i {link.PROXY_IF} -p udp --dport 53 -j REDIRECT --to-ports 5353",
        f"-A AWF_PREROUTING -i {link.PROXY_IF} -p tcp --dport 53 -j REDIRECT --to-ports 5353",
        f"-A AWF_PREROUTING -i {link.PROXY_IF} -p tcp --dport 80 -j REDIRECT --to-ports 3129",
        f"-A AWF_PREROUTING -i {link.PROXY_IF} -p tcp --dport 443 -j REDIRECT --to-ports 3130",
        f"-A AWF_PREROUTING -i {link.PROXY_IF} -j RETURN",
    ]
    forward = [r for r in rules if r.startswith("-A AWF_FORWARD")]
    # the only forwarded traffic: the server's connections to the kernel's ports, and their replies
    assert forward[0].startswith("-A AWF_FORWARD -i @INGRESS_IF@ -s 172.30.0.1 -o awfp0") and "DNAT" in forward[0]
    assert all("ESTABLISHED" in r for r in forward[1:3])
    assert forward[-2:] == ["-A AWF_FORWARD -p tcp -j REJECT --reject-with tcp-reset",
                            "-A AWF_FORWARD -j REJECT --reject-with icmp-admin-prohibited"]
    link_input = [r for r in rules if r.startswith(f"-A AWF_INPUT -i {link.PROXY_IF}")]
    assert len(link_input) == 3 and all(f"-d {link.PROXY_ADDRESS}/32" in r for r in link_input)
    # redirected ports only when redirected; the explicit port directly
    assert sum("--ctstate DNAT" in r for r in link_input) == 2
    assert "-I FORWARD 1 -j DROP" not in rules


def test_unrouted_rules_have_no_link():
    rules = _rules(False)
    assert "-I FORWARD 1 -j DROP" in rules
    assert not [r for r in rules if link.PROXY_IF in r or "PREROUTING" in r]


@pytest.mark.parametrize("env, expected", [
    ({}, ["127.0.0.1"]),
    ({"AWF_LINK_ADDRESS": link.PROXY_ADDRESS}, ["127.0.0.1", link.PROXY_ADDRESS]),
    ({"AWF_LINK_ADDRESS": "not-an-address"}, ["127.0.0.1"]),
])
def test_resolver_listens_on_the_link_too(env, expected):
    from tests.unit.test_resolver import resolver

    assert resolver.listen_addresses({"listen": "127.0.0.1"}, env) == expected


def test_the_gvisor_gofer_is_found_by_its_container(tmp_path):
    """Under gVisor the broker checks the kernel's mounts through the gofer's
    root (the sandbox process's root is an empty directory)."""
    from awf_kernel.sandbox.docker import gvisor_gofer_pid

    cid = "ab" * 32
    procs = {"1": b"/sbin/init\0", "150": b"runsc-gofer\0--bundle\0/b/" + cid.encode() + b"\0",  # a user's fake
             "200": b"runsc-sandbox\0--root=/r\0boot\0--bundle\0/b/" + cid.encode() + b"\0",
             "201": b"runsc-gofer\0--root=/r\0gofer\0--bundle\0/b/" + cid.encode() + b"\0",
             "300": b"runsc-gofer\0gofer\0--bundle\0/b/" + b"cd" * 32 + b"\0", "self": b""}
    for pid, cmdline in procs.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(cmdline)
        uid = "1000" if pid == "150" else "0"  # not root: any user could start a process named so
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    assert gvisor_gofer_pid(cid, str(tmp_path)) == 201
    assert gvisor_gofer_pid("ef" * 32, str(tmp_path)) is None
