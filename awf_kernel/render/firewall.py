"""iptables-restore input for one pod, installed by the firewall init step.

The rules live in chains of our own (AWF_*) jumped to from the top of the
built-in chains, and are loaded with --noflush: Docker keeps its embedded-DNS
rules in the same namespace and they must survive. Three things are only
known inside the namespace and are left as placeholders for the init step:
the interface names (@EGRESS_IF@, @INGRESS_IF@) and, when the admin names no
`dns_servers`, the resolvers Docker gave the proxy (a line holding @UPSTREAM@
is repeated once per upstream resolver address).

The kernel shares the proxy's network namespace (the pod model), so the rules
also keep it away from the proxy's own sockets: port 53 stays privileged (the
resolver listens above 1024, reached through REDIRECT), UDP to loopback is
refused unless it was redirected to the resolver, and the proxy's internal
ports are reachable only through the REDIRECTs.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import addresses
from . import link, ports

UPSTREAM = "@UPSTREAM@"


def _reject(rule: str) -> list[str]:
    """A rejection that fails fast for TCP (reset) and everything else (ICMP)."""
    return [f"{rule} -p tcp -j REJECT --reject-with tcp-reset",
            f"{rule} -j REJECT --reject-with icmp-admin-prohibited"]


def render_ipv4_rules(*, kernel_ports: Iterable[int], server_address: str | None = None,
                      host_addresses: Iterable[str] = (), dns_upstreams: Iterable[str] = (),
                      allowed_private: Iterable[str] = (), proxy_uid: int = ports.PROXY_UID,
                      routed: bool = False) -> str:
    """Default deny comes last in every chain; everything above it is a narrow exception.

    - server_address: the only source that may open the kernel's ports (the
      Docker host's address on the network that publishes them). Other
      containers on that network must not read the kernel's output.
    - The proxy's uid may leave only through the egress interface, to web
      ports at globally routable addresses (or the admin's `allowed_private`
      ranges), and to its DNS upstreams on port 53; never to the Docker
      host's own addresses (`host_addresses`).
    - Every DNS query from anything but the proxy goes to the pod's resolver,
      whatever server it was addressed to (Docker's 127.0.0.11 included).
    - Rejections, not drops, so a blocked call fails at once.
    - routed (render/link.py): the kernel is beyond the link interface, not in
      this namespace. What it sends is judged on arrival: TCP 80/443 and DNS
      to any address are redirected to Squid and the resolver (which listen
      on the link's address too), Squid's explicit port is open on the link
      address, and nothing else is accepted or forwarded. The kernel's ports
      are DNAT'ed to it, from the server's address only.
    """
    kports = ",".join(str(p) for p in sorted(set(kernel_ports)))
    if not kports:
        raise ValueError("a pod needs the kernel's ports")
    web = ",".join(str(p) for p in ports.WEB_PORTS)
    owner = f"-m owner --uid-owner {proxy_uid}"
    upstreams = [u for u in dns_upstreams if u] or [UPSTREAM]
    proxy_internal = f"{ports.SQUID_HTTP_INTERCEPT},{ports.SQUID_HTTPS_INTERCEPT},{ports.RESOLVER_LISTEN}"
    to_resolver = f"REDIRECT --to-ports {ports.RESOLVER_LISTEN}"
    src = f" -s {server_address}" if server_address else ""
    lines = [
        "*nat",
        ":AWF_OUTPUT - [0:0]",
        "-I OUTPUT 1 -j AWF_OUTPUT",
        # Squid asks the pod's resolver on port 53 of loopback.
        f"-A AWF_OUTPUT {owner} -d 127.0.0.1/32 -p udp --dport {ports.RESOLVER} -j {to_resolver}",
        f"-A AWF_OUTPUT {owner} -d 127.0.0.1/32 -p tcp --dport {ports.RESOLVER} -j {to_resolver}",
        # Tunnels of explicit CONNECTs come back in, so their SNI is checked too.
        f"-A AWF_OUTPUT {owner} -p tcp --dport 443 -m tos --tos {ports.CONNECT_TOS:#04x}/0xfc"
        f" -j REDIRECT --to-ports {ports.SQUID_HTTPS_INTERCEPT}",
        f"-A AWF_OUTPUT {owner} -j RETURN",
        f"-A AWF_OUTPUT -p udp --dport {ports.RESOLVER} -j {to_resolver}",
        f"-A AWF_OUTPUT -p tcp --dport {ports.RESOLVER} -j {to_resolver}",
        "-A AWF_OUTPUT -d 127.0.0.0/8 -j RETURN",
        f"-A AWF_OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports {ports.SQUID_HTTP_INTERCEPT}",
        f"-A AWF_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports {ports.SQUID_HTTPS_INTERCEPT}",
        *(_routed_nat(kports) if routed else ()),
        "COMMIT",
        "*filter",
        ":AWF_INPUT - [0:0]",
        ":AWF_OUTPUT - [0:0]",
        "-I INPUT 1 -j AWF_INPUT",
        "-I OUTPUT 1 -j AWF_OUTPUT",
        *(_routed_forward(kports, src) if routed else ["-I FORWARD 1 -j DROP"]),
        # Inbound: only the Jupyter server side (the Docker host's address on the
        # publishing network) may open the kernel's ports.
        "-A AWF_INPUT -i lo -j ACCEPT",
        "-A AWF_INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A AWF_INPUT -i @INGRESS_IF@{src} -p tcp -m multiport --dports {kports} -j ACCEPT",
        *(_routed_input() if routed else ()),
        *_reject("-A AWF_INPUT"),
        # Outbound, everyone: replies, and what the nat table redirected to the
        # proxy (redirected packets carry 127.0.0.1 but do not match `-o lo`).
        "-A AWF_OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A AWF_OUTPUT -d 127.0.0.1/32 -m conntrack --ctstate DNAT -j ACCEPT",
        # The proxy's own traffic on loopback (Squid <-> resolver, Docker's DNS).
        f"-A AWF_OUTPUT {owner} -d 127.0.0.0/8 -j ACCEPT",
        # The kernel on loopback: the explicit proxy port and its own TCP
        # servers; never the proxy's internal ports directly, never UDP (the
        # proxy's DNS sockets), never 127.0.0.11 (Docker's resolver).
        f"-A AWF_OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports {proxy_internal} "
        "-j REJECT --reject-with tcp-reset",
        "-A AWF_OUTPUT -d 127.0.0.1/32 -p tcp -j ACCEPT",
        # The proxy leaving: DNS to the upstreams the admin named (wherever they
        # are), never the Docker host otherwise, then web ports to globally
        # routable addresses only (or the admin's intranet ranges).
        *(f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -d {u}/32 -p {proto} --dport {ports.RESOLVER} -j ACCEPT"
          for u in upstreams for proto in ("udp", "tcp")),
        *(f"-A AWF_OUTPUT {owner} -d {h}/32 -j REJECT --reject-with icmp-admin-prohibited"
          for h in host_addresses if h),
        *(f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -d {net} -p tcp -m multiport --dports {web} -j ACCEPT"
          for net in allowed_private),
        *(f"-A AWF_OUTPUT {owner} -d {net} -j REJECT --reject-with icmp-admin-prohibited"
          for net in addresses.NON_GLOBAL_V4),
        f"-A AWF_OUTPUT {owner} -o @EGRESS_IF@ -p tcp -m multiport --dports {web} -j ACCEPT",
        *_reject("-A AWF_OUTPUT"),
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def _routed_nat(kports: str) -> list[str]:
    kernel_side = f"-A AWF_PREROUTING -i {link.PROXY_IF}"
    return [
        ":AWF_PREROUTING - [0:0]",
        "-I PREROUTING 1 -j AWF_PREROUTING",
        # REDIRECT sends to the link's own address, where Squid and the resolver also listen.
        *(f"{kernel_side} -p {proto} --dport {ports.RESOLVER} -j REDIRECT --to-ports {ports.RESOLVER_LISTEN}"
          for proto in ("udp", "tcp")),
        f"{kernel_side} -p tcp --dport 80 -j REDIRECT --to-ports {ports.SQUID_HTTP_INTERCEPT}",
        f"{kernel_side} -p tcp --dport 443 -j REDIRECT --to-ports {ports.SQUID_HTTPS_INTERCEPT}",
        f"{kernel_side} -j RETURN",
        # The published ports reach the kernel at its end of the link (FORWARD checks the source).
        f"-A AWF_PREROUTING -p tcp -m multiport --dports {kports} -j DNAT --to-destination {link.KERNEL_ADDRESS}",
    ]


def _routed_forward(kports: str, src: str) -> list[str]:
    return [
        ":AWF_FORWARD - [0:0]",
        "-I FORWARD 1 -j AWF_FORWARD",
        f"-A AWF_FORWARD -i @INGRESS_IF@{src} -o {link.PROXY_IF} -d {link.KERNEL_ADDRESS}/32 -p tcp "
        f"-m multiport --dports {kports} -m conntrack --ctstate DNAT -j ACCEPT",
        f"-A AWF_FORWARD -i {link.PROXY_IF} -o @INGRESS_IF@ -s {link.KERNEL_ADDRESS}/32 "
        "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A AWF_FORWARD -i @INGRESS_IF@ -o {link.PROXY_IF} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        *_reject("-A AWF_FORWARD"),
    ]


def _routed_input() -> list[str]:
    from_kernel = f"-A AWF_INPUT -i {link.PROXY_IF} -s {link.KERNEL_ADDRESS}/32 -d {link.PROXY_ADDRESS}/32"
    redirected = f"{ports.SQUID_HTTP_INTERCEPT},{ports.SQUID_HTTPS_INTERCEPT},{ports.RESOLVER_LISTEN}"
    return [
        f"{from_kernel} -p tcp --dport {ports.SQUID_EXPLICIT} -j ACCEPT",
        f"{from_kernel} -p tcp -m multiport --dports {redirected} -m conntrack --ctstate DNAT -j ACCEPT",
        f"{from_kernel} -p udp --dport {ports.RESOLVER_LISTEN} -m conntrack --ctstate DNAT -j ACCEPT",
    ]


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
