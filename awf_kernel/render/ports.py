"""Fixed ports inside a pod. Each pod has its own network namespace, so these
never clash between kernels; only the kernel's five ZMQ ports are published."""

SQUID_EXPLICIT = 3128
SQUID_HTTP_INTERCEPT = 3129
SQUID_HTTPS_INTERCEPT = 3130
RESOLVER = 53          # where clients address DNS; redirected to RESOLVER_LISTEN
# The resolver listens above 1024 so that port 53 stays privileged in the pod's
# namespace: the kernel (no capabilities) can never bind it first.
RESOLVER_LISTEN = 5353
PROXY_UID = 13  # Debian's `proxy` user in the proxy image: the only uid allowed out
WEB_PORTS = (80, 443)
# IP TOS byte Squid sets on tunnels it opens for explicit CONNECTs, so the
# firewall can loop them back through the SNI-checking intercept port.
CONNECT_TOS = 0x20
