"""iptables-restore input for one pod, installed by the firewall init step.

The rules live in chains of our own (AWF_*) jumped to from the top of the
built-in chains, and are loaded with --noflush: Docker keeps its embedded-DNS
rules in the same namespace and they must survive. Interface names are left
as @EGRESS_IF@ / @INGRESS_IF@ for the init step to fill in, because only code
inside the namespace can see which interface got which network.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import ports

# Addresses the proxy must never reach even when an allowed name resolves to
# them: cloud metadata and other link-local services.
ALWAYS_DENIED_V4 = ("169.254.0.0/16",)


def render_ipv4_rules(*, kernel_ports: Iterable[int], denied_destinations: Iterable[str] = (),
                      proxy_uid: int = ports.PROXY_UID) -> str:
    """Default deny comes last in every chain; everything above it is a narrow exception.

    - The proxy's uid may leave, and only through the egress interface to web
      ports and DNS; everything else's TCP to ports 80/443 is redirected to Squid.
    - Every DNS query from anything but the proxy goes to the pod's resolver,
      whatever server it was addressed to (Docker's 127.0.0.11 included).
    - Rejections, not drops, so a blocked call fails at once.
    """
    kports = ",".join(str(p) for p in sorted(set(kernel_ports)))
    if not kports:
        raise ValueError("a pod needs the kernel's ports")
    web = ",".join(str(p) for p in ports.WEB_PORTS)
    owner = f"-m owner --uid-owner {proxy_uid}"
    denied = list(ALWAYS_DENIED_V4) + [d for d in denied_destinations if d]
    lines = [
        "*nat",
        ":AWF_OUTPUT - [0:0]",
        "-I OUTPUT 1 -j AWF_OUTPUT",
        # Tunnels of explicit CONNECTs come back in, so their SNI is checked too.
        f"-A AWF_OUTPUT {owner} -p tcp --dport 443 -m tos --tos {ports.CONNECT_TOS:#04x}/0xfc"
        f" -j REDIRECT --to-ports {ports.SQUID_HTTPS_INTERCEPT}",
        f"-A AWF_OUTPUT {owner} -j RETURN",
        f"-A AWF_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports {ports.RESOLVER}",
        f"-A AWF_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports {ports.RESOLVER}",
        "-A AWF_OUTPUT -d 127.0.0.0/8 -j RETURN",
        f"-A AWF_OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports {ports.SQUID_HTTP_INTERCEPT}",
        f"-A AWF_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports {ports.SQUID_HTTPS_INTERCEPT}",
        "COMMIT",
        "*filter",
        ":AWF_INPUT - [0:0]",
        ":AWF_OUTPUT - [0:0]",
        "-I INPUT 1 -j AWF_INPUT",
        "-I OUTPUT 1 -j AWF_OUTPUT",
        "-I FORWARD 1 -j DROP",
        # Inbound: the Jupyter server's connections to the kernel, via the ingress side only.
        "-A AWF_INPUT -i lo -j ACCEPT",
        "-A AWF_INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A AWF_INPUT -i @INGRESS_IF@ -p tcp -m multiport --dports {kports} -j ACCEPT",
        "-A AWF_INPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A AWF_INPUT -j REJECT --reject-with icmp-admin-prohibited",
        # Outbound. Redirected packets carry 127.0.0.1 as destination but do not
        # match `-o lo`, so loopback is accepted by address (127.0.0.1 only:
        # 127.0.0.11, Docker's resolver, is not ours to use).
        "-A AWF_OUTPUT -d 127.0.0.1/32 -j ACCEPT",
        "-A AWF_OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A AWF_OUTPUT {owner} -d 127.0.0.0/8 -p udp --dport 53 -j ACCEPT",
        f"-A AWF_OUTPUT {owner} -d 127.0.0.0/8 -j ACCEPT",
        *(f"-A AWF_OUTPUT {owner} -d {d} -j REJECT --reject-with icmp-admin-prohibited" for d in denied),
        f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -p tcp -m multiport --dports {web} -j ACCEPT",
        f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -p udp --dport 53 -j ACCEPT",
        f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -p tcp --dport 53 -j ACCEPT",
        "-A AWF_OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A AWF_OUTPUT -j REJECT --reject-with icmp-admin-prohibited",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def render_ipv6_rules() -> str:
    """The pod has no IPv6 route out; anything but loopback is refused at once."""
    lines = [
        "*filter",
        ":AWF_INPUT - [0:0]",
        ":AWF_OUTPUT - [0:0]",
        "-I INPUT 1 -j AWF_INPUT",
        "-I OUTPUT 1 -j AWF_OUTPUT",
        "-I FORWARD 1 -j DROP",
        "-A AWF_INPUT -i lo -j ACCEPT",
        "-A AWF_INPUT -j DROP",
        "-A AWF_OUTPUT -o lo -j ACCEPT",
        "-A AWF_OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A AWF_OUTPUT -j REJECT --reject-with icmp6-adm-prohibited",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"
