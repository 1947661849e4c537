"""The kernel's own link to its proxy, for runtimes with a network stack of
their own (gVisor's netstack): the routed wiring.

Under runc the kernel shares the proxy's network namespace and the pod's
rules see its sockets there. A runtime with its own stack would send the
kernel's packets past those rules, so the kernel gets a namespace of its own
(held by a tiny `holder` container) whose only interface is one end of a veth
pair; the other end is in the proxy's namespace and the kernel's default
route points at it. Every packet the kernel sends, whatever stack made it,
crosses into the proxy's namespace and is judged there, outside the kernel's
sandbox: TCP 80/443 and DNS are redirected to Squid and the resolver, 3128
reaches Squid's explicit port, everything else is refused. No Docker network
and no host address is involved, so the kernel has no path to the host but
through the proxy. The same addresses serve every pod: each link is a
point-to-point pair in two private namespaces.
"""

from __future__ import annotations

PROXY_ADDRESS = "169.254.253.1"
KERNEL_ADDRESS = "169.254.253.2"
PREFIX = 30
PROXY_IF = "awfp0"   # in the proxy's namespace
KERNEL_IF = "awfk0"  # in the kernel's (the holder's) namespace
