"""Which destination addresses a pod's proxy may connect to.

An allowed *name* is not enough: its DNS answer may point inside the network
(another container, the Docker host through a bridge gateway, a cloud metadata
service). Only globally routable addresses are reachable, unless the admin
names private ranges in `allow_private_destinations` (an intranet site).

Pure functions. The list below is the IANA IPv4 special-purpose registry plus
multicast and the reserved block; `ipaddress`'s `is_global` is the reference
the unit tests hold it to (every non-global address is covered). IPv6 never
leaves a pod at all, so only IPv4 is listed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .errors import AWFError

NON_GLOBAL_V4: tuple[str, ...] = (
    "0.0.0.0/8",          # "this network"
    "10.0.0.0/8",         # private
    "100.64.0.0/10",      # carrier-grade NAT
    "127.0.0.0/8",        # loopback
    "169.254.0.0/16",     # link-local, cloud metadata
    "172.16.0.0/12",      # private (Docker's default pools)
    "192.0.0.0/24",       # IETF protocol assignments
    "192.0.2.0/24",       # TEST-NET-1
    "192.88.99.0/24",     # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",     # private
    "198.18.0.0/15",      # network benchmark testing
    "198.51.100.0/24",    # TEST-NET-2
    "203.0.113.0/24",     # TEST-NET-3
    "224.0.0.0/4",        # multicast: never a TCP destination
    "240.0.0.0/4",        # reserved, and the limited broadcast address
)

# Never reachable, whatever the admin allows: the link-local block holds cloud
# metadata services (169.254.169.254) and loopback is the pod itself.
NEVER_V4: tuple[str, ...] = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8")


class DestinationError(AWFError):
    hint = "write IPv4 networks in CIDR form, e.g. 10.20.0.0/16 (an intranet range)"


def parse_private_destinations(values: Iterable[str], setting: str = "allow_private_destinations"
                               ) -> tuple[ipaddress.IPv4Network, ...]:
    """Validate the admin's opt-in ranges. Loopback, link-local (cloud
    metadata) and "this network" cannot be opted in: they are the pod itself
    or the host's control plane, never an intranet site."""
    out = []
    for value in values:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as exc:
            raise DestinationError(f"{setting}: {value!r} is not a network ({exc})") from None
        if net.version != 4:
            raise DestinationError(f"{setting}: {value!r} is IPv6; pods have no IPv6 route out",
                                   hint="list IPv4 networks only")
        for never in NEVER_V4:
            if net.overlaps(ipaddress.ip_network(never)):
                raise DestinationError(f"{setting}: {value!r} overlaps {never}, which no pod may reach",
                                       hint="name the intranet's own range, not loopback or link-local")
        out.append(net)
    return tuple(out)


def is_reachable(address: str, allowed_private: Iterable[ipaddress.IPv4Network] = ()) -> bool:
    """Whether the proxy may connect to this address (the rules' semantics, for tests and tools)."""
    ip = ipaddress.ip_address(address)
    if ip.version != 4:
        return False
    if any(ip in ipaddress.ip_network(n) for n in NEVER_V4):
        return False
    if any(ip in n for n in allowed_private):
        return True
    return not any(ip in ipaddress.ip_network(n) for n in NON_GLOBAL_V4)
