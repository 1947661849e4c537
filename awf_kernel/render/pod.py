"""Docker SDK arguments for the three containers of one kernel's pod.

Pure: settings in, `containers.create(**kwargs)` dictionaries out, so tests can
compare a whole spec with an expected value and no engine is needed. The pod:

- proxy:    owns the network namespace; Squid + resolver as uid 13, no capabilities;
            publishes the kernel's ports on 127.0.0.1 only.
- firewall: one-shot, root with NET_ADMIN only, in the proxy's namespace.
- kernel:   joins the proxy's namespace; no capabilities at any moment.

With `routed` (a kernel runtime with a network stack of its own, render/link.py)
the kernel joins a `holder`'s namespace instead, linked to the proxy's by a
veth pair the firewall step makes and a one-shot `link` step configures.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from .. import naming
from . import link, ports

CONNECTION_DIR = "/awf/connection"
CONNECTION_FILE = f"{CONNECTION_DIR}/kernel.json"
# Docker's own log of each container (the kernel's raw stdout, Squid's
# cache.log) is capped: a kernel can write hundreds of MB a second there.
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "2"}}
AUDIT_DIR_IN_PROXY = "/var/log/awf"
AUDIT_DIR_IN_KERNEL = "/awf/audit"   # read-only: the kernel reads its own pod's denials
ADDONS_DIR_IN_KERNEL = "/awf/lib"    # read-only: the per-cell notice extension
PROXY_URL = f"http://127.0.0.1:{ports.SQUID_EXPLICIT}"
LINK_PROXY_URL = f"http://{link.PROXY_ADDRESS}:{ports.SQUID_EXPLICIT}"
RESOLV_CONF_IN_KERNEL = "/etc/resolv.conf"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    def to_docker(self) -> dict:
        return {"Type": "bind", "Source": self.source, "Target": self.target, "ReadOnly": self.read_only}


# The pod's own mounts in the kernel live here; an extra mount there would clash with them.
RESERVED_IN_KERNEL = "/awf"


def parse_mount(spec: object, where: str = "extra_mounts") -> Mount:
    """One `HOST_PATH:CONTAINER_PATH[:ro|:rw]` entry -> a Mount, or ValueError
    naming the entry. Pure: the host path is taken as written (the provisioner
    resolves symlinks when it mounts it)."""
    if not isinstance(spec, str):
        raise ValueError(f"{where}: {spec!r} is not a string")
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"{where}: {spec!r} is not HOST_PATH:CONTAINER_PATH[:ro]")
    host, target = parts[0], parts[1]
    if not host.startswith("/") or not target.startswith("/"):
        raise ValueError(f"{where}: {spec!r}: both paths must be absolute (a relative host path would "
                         "depend on the folder the Jupyter server was started in)")
    normalized = "/" + posixpath.normpath(target).lstrip("/")
    if normalized == RESERVED_IN_KERNEL or normalized.startswith(RESERVED_IN_KERNEL + "/"):
        raise ValueError(f"{where}: {spec!r}: {RESERVED_IN_KERNEL} in the kernel is the sandbox's own")
    return Mount(host, target, len(parts) == 3 and parts[2] == "ro")


def parse_mounts(specs: object, where: str = "extra_mounts") -> tuple[Mount, ...]:
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise ValueError(f"{where}: must be a list of HOST_PATH:CONTAINER_PATH[:ro] strings")
    return tuple(parse_mount(spec, f"{where}[{i}]") for i, spec in enumerate(specs))


@dataclass(frozen=True)
class PodSettings:
    kernel_id: str
    proxy_image: str
    kernel_image: str
    kernel_cmd: tuple[str, ...]
    kernel_ports: tuple[int, ...]
    network: str                      # the network the proxy is created on (publishes the ports)
    uid: int
    gid: int
    connection_dir: str               # host dir, holds the container's copy of the connection file
    audit_dir: str                    # host dir for this kernel's audit log
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    mounts: tuple[Mount, ...] = ()
    mem_limit: str | None = "2g"
    cpu_limit: float | None = 1.0
    pids_limit: int | None = 512
    server: str = ""
    addons_dir: str | None = None     # host dir holding awf_notice.py; None = no cell notices
    dns_servers: tuple[str, ...] = () # the admin's resolvers, also for Docker's own DNS in the pod
    read_only_image: bool = True      # the kernel's image layer is read-only ...
    tmp_size: str | None = "512m"     # ... and /tmp, a tmpfs of this size, is its scratch space
    owner_uid: int | None = None      # hub mode: the user the broker made this pod for (a label)
    pod: str | None = None            # the warm pool pod this kernel runs in (its id), if any
    runtime: str = ""                 # the kernel container's OCI runtime ("" = the engine's default);
                                      # awf_kernel.runtime decides which ones keep the pod's rules in force
    routed: bool = False              # the kernel in a namespace of its own, routed through the proxy
                                      # (a runtime with its own network stack: render/link.py)


def _limits(s: PodSettings) -> dict:
    out: dict = {}
    if s.mem_limit:
        out["mem_limit"] = s.mem_limit
        out["memswap_limit"] = s.mem_limit  # no swap beyond the limit
    if s.cpu_limit:
        out["nano_cpus"] = int(s.cpu_limit * 1e9)
    if s.pids_limit:
        out["pids_limit"] = s.pids_limit
    return out


_LOCKED_DOWN = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "init": True,
                "log_config": LOG_CONFIG}


def proxy_create_kwargs(s: PodSettings) -> dict:
    return {
        "image": s.proxy_image,
        "name": naming.resource_name(s.kernel_id, "proxy"),
        "labels": naming.labels(s.kernel_id, "proxy", s.server, s.owner_uid),
        "network": s.network,
        "ports": {f"{p}/tcp": ("127.0.0.1", p) for p in s.kernel_ports},
        # Port 53 stays privileged in the pod (the kernel shares the namespace
        # and must never bind it); the resolver listens above 1024.
        # (Docker >= 20.10 sets it to 0 in every container unless told otherwise.)
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": "1024",
                    "net.ipv6.conf.all.disable_ipv6": "1",
                    "net.ipv6.conf.default.disable_ipv6": "1",
                    # routed: Squid and the resolver bind the link's address before
                    # the link exists; the kernel's ports are forwarded to it.
                    **({"net.ipv4.ip_nonlocal_bind": "1", "net.ipv4.ip_forward": "1"} if s.routed else {})},
        **({"environment": {"AWF_LINK_ADDRESS": link.PROXY_ADDRESS}} if s.routed else {}),
        "mounts": [Mount(s.audit_dir, AUDIT_DIR_IN_PROXY).to_docker()],
        "mem_limit": "256m",
        "memswap_limit": "256m",
        "pids_limit": 256,
        "detach": True,
        **_LOCKED_DOWN,
        # Docker's embedded resolver in the pod forwards to the admin's
        # servers too, never to the host's: one set of upstreams per pod.
        **({"dns": list(s.dns_servers)} if s.dns_servers else {}),
    }


def firewall_create_kwargs(s: PodSettings, proxy_id: str, env: dict[str, str],
                           holder_id: str | None = None) -> dict:
    """`holder_id` (routed): the firewall step also makes the kernel's link, a
    veth pair whose far end it moves into the holder's namespace by the
    holder's pid 1, which it sees by sharing the holder's pid namespace."""
    return {
        **_one_shot_step(s, "firewall", "/usr/local/bin/awf-firewall", proxy_id, ["NET_ADMIN", "NET_RAW"], env),
        "pids_limit": 64,
        "mem_limit": "128m",
        **({"pid_mode": f"container:{holder_id}"} if holder_id else {}),
    }


def _one_shot_step(s: PodSettings, role: str, entrypoint: str, netns_id: str, caps: list[str],
                   env: dict[str, str]) -> dict:
    """A pod's root step that runs once in a namespace before any kernel code:
    root, only `caps`, no new privileges, from the proxy's image."""
    return {
        "image": s.proxy_image,
        "name": naming.resource_name(s.kernel_id, role),
        "labels": naming.labels(s.kernel_id, role, s.server, s.owner_uid),
        "entrypoint": [entrypoint],
        "user": "0:0",
        "network_mode": f"container:{netns_id}",
        "cap_drop": ["ALL"],
        "cap_add": caps,
        "security_opt": ["no-new-privileges"],
        "environment": env,
        "log_config": LOG_CONFIG,
        "detach": True,
    }


def holder_create_kwargs(s: PodSettings) -> dict:
    """Routed: the kernel's network namespace, with no interface but loopback
    until the firewall step links it to the proxy. It only holds the
    namespace (sleeps), as nobody, with no capabilities."""
    return {
        "image": s.proxy_image,
        "name": naming.resource_name(s.kernel_id, "holder"),
        "labels": naming.labels(s.kernel_id, "holder", s.server, s.owner_uid),
        "entrypoint": ["sleep", "infinity"],
        "user": "65534:65534",
        "network_mode": "none",
        "sysctls": {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
        "pids_limit": 8,
        "mem_limit": "32m",
        "memswap_limit": "32m",
        "detach": True,
        **_LOCKED_DOWN,
    }


def link_create_kwargs(s: PodSettings, holder_id: str) -> dict:
    """Routed: the one-shot step that gives the kernel's end of the link its
    address and the default route through the proxy, in the holder's
    namespace, before each kernel container starts there (gVisor copies the
    namespace's interfaces and routes when it starts, and takes the address
    away from the namespace, so a restarted kernel needs it again)."""
    env = {"AWF_LINK_IF": link.KERNEL_IF, "AWF_LINK_ADDRESS": f"{link.KERNEL_ADDRESS}/{link.PREFIX}",
           "AWF_LINK_GATEWAY": link.PROXY_ADDRESS}
    return {**_one_shot_step(s, "link", "/usr/local/bin/awf-link", holder_id, ["NET_ADMIN"], env),
            "pids_limit": 16, "mem_limit": "64m"}


def resolv_conf(s: PodSettings) -> str:
    """Routed: the kernel's resolver is the proxy's end of the link (Docker's
    127.0.0.11 would be the kernel runtime's own loopback)."""
    return f"# awf-kernel: the pod's filtering resolver\nnameserver {link.PROXY_ADDRESS}\noptions ndots:0\n"


def kernel_env(s: PodSettings) -> dict[str, str]:
    """The kernel's whole environment: the allowlisted values the provisioner
    passed plus what the sandbox itself needs. Never the server's environment."""
    env = dict(s.env)
    proxy_url = LINK_PROXY_URL if s.routed else PROXY_URL
    env.update({
        "HOME": "/tmp",
        "HTTP_PROXY": proxy_url, "HTTPS_PROXY": proxy_url,
        "http_proxy": proxy_url, "https_proxy": proxy_url,
        "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1",
        "AWF_SANDBOX": "1",
        "AWF_KERNEL_ID": s.kernel_id,
        "AWF_AUDIT_DIR": AUDIT_DIR_IN_KERNEL,
    })
    if s.addons_dir:
        env["PYTHONPATH"] = ADDONS_DIR_IN_KERNEL + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def kernel_create_kwargs(s: PodSettings, netns_id: str) -> dict:
    """`netns_id`: the container whose network namespace the kernel joins
    (the proxy, or routed: the holder)."""
    # Only the connection file itself: ipykernel rewrites it in place, and the
    # kernel gets no host folder it could fill with other files.
    mounts = [Mount(f"{s.connection_dir}/kernel.json", CONNECTION_FILE),
              Mount(s.audit_dir, AUDIT_DIR_IN_KERNEL, read_only=True)]
    if s.routed:
        mounts.append(Mount(f"{s.connection_dir}/resolv.conf", RESOLV_CONF_IN_KERNEL, read_only=True))
    if s.addons_dir:
        mounts.append(Mount(s.addons_dir, ADDONS_DIR_IN_KERNEL, read_only=True))
    if s.workdir:
        mounts.append(Mount(s.workdir, s.workdir))
    mounts.extend(s.mounts)
    kwargs = {
        "image": s.kernel_image,
        "name": naming.resource_name(s.kernel_id, "kernel"),
        "labels": naming.labels(s.kernel_id, "kernel", s.server, s.owner_uid, pod=s.pod),
        "command": list(s.kernel_cmd),
        "entrypoint": [""],  # run the kernel command itself, whatever the image's ENTRYPOINT
        "user": f"{s.uid}:{s.gid}",
        "network_mode": f"container:{netns_id}",
        "environment": kernel_env(s),
        "mounts": [m.to_docker() for m in mounts],
        "working_dir": s.workdir or "/tmp",
        "detach": True,
        **_LOCKED_DOWN,
        **_limits(s),
    }
    if s.runtime:
        kwargs["runtime"] = s.runtime  # the kernel only: the proxy side stays on the engine's own runtime
    if s.read_only_image:
        kwargs["read_only"] = True
        kwargs["tmpfs"] = {"/tmp": "mode=1777" + (f",size={s.tmp_size}" if s.tmp_size else "")}
    return kwargs


def ingress_network_name(kernel_id: str) -> str:
    return naming.resource_name(kernel_id, "ingress")


def ingress_network_kwargs(s: PodSettings) -> dict:
    """A per-kernel bridge for publishing the kernel's ports when the egress
    network is internal (Docker ignores published ports there). Nothing may
    leave through it: the firewall removes its default route."""
    return {
        "name": ingress_network_name(s.kernel_id),
        "driver": "bridge",
        "labels": naming.labels(s.kernel_id, "ingress", s.server, s.owner_uid),
        "options": {"com.docker.network.bridge.enable_icc": "false"},
    }
