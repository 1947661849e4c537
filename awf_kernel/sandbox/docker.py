"""The pod's lifecycle on a Docker engine, through the docker SDK.

Every function here is synchronous and blocking; the provisioner runs them in
a worker thread (`asyncio.to_thread`) so the Jupyter server's event loop never
waits on the engine. `create_pod` reads as the script of the pod's start:
networks, proxy, firewall, kernel; if any step fails, everything made so far
is removed before the error propagates.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from .. import naming
from ..errors import DockerUnavailable, ImageMissing, NetworkMissing, PortClash, SandboxStartError
from ..render import firewall, link
from ..render import pod as podspec
from ..render import ports

log = logging.getLogger("awf_kernel")
_clients: dict[str | None, docker.DockerClient] = {}


def client() -> docker.DockerClient:
    """The engine connection, made on first use (never at import), one per
    DOCKER_HOST so a changed environment is honoured."""
    key = os.environ.get("DOCKER_HOST")
    if key not in _clients:
        try:
            c = docker.from_env(timeout=60)
            c.ping()
        except DockerException as exc:
            raise DockerUnavailable(str(exc)) from exc
        _clients[key] = c
    return _clients[key]


@dataclass(frozen=True)
class EgressNetwork:
    name: str
    internal: bool
    subnets: tuple[str, ...]
    host_addresses: tuple[str, ...]  # the Docker host's own addresses on it (IPAM), internal or not


@dataclass
class Pod:
    kernel_id: str
    proxy_id: str
    kernel_id_container: str
    ingress_network: str | None
    # When each container started: a pod container that ran again (`docker
    # restart`, an engine restart) is no longer the pod that was set up.
    started: dict[str, str] | None = None
    # Seconds each start step took (the benchmark's breakdown; logged at start).
    timings: dict[str, float] = field(default_factory=dict)
    # Routed pods: the container holding the kernel's own network namespace.
    holder_id: str | None = None


def egress_network(name: str) -> EgressNetwork:
    try:
        net = client().networks.get(name)
    except NotFound:
        raise NetworkMissing(name) from None
    attrs = net.attrs
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    gateways = [c["Gateway"] for c in configs if c.get("Gateway") and ":" not in c["Gateway"]]
    subnets = tuple(c["Subnet"] for c in configs if c.get("Subnet"))
    internal = bool(attrs.get("Internal"))
    if attrs.get("Driver") == "host" or name == "host":
        raise SandboxStartError(f"egress_network '{name}' is the host's network; a pod needs its own namespace",
                                hint="set egress_network to a bridge network (default: bridge)")
    return EgressNetwork(name, internal, subnets, tuple(gateways))


def parse_local_addresses(fib_trie: str) -> list[str]:
    """The IPv4 addresses a host owns, from Linux's /proc/net/fib_trie (the
    `/32 host LOCAL` entries): every one of them is the Docker host itself."""
    out, last = [], None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text == "/32 host LOCAL" and last and not last.startswith("127."):
            out.append(last)
    return sorted(set(out))


def engine_host_addresses() -> list[str]:
    """The Docker host's own addresses, when the engine runs on this machine
    (a unix socket). A pod must never reach them, whatever a name resolves to
    and whatever range the admin opted in: the host is not an intranet site.
    A remote engine's host (DOCKER_HOST=tcp://..., a Desktop VM) is known only
    by its gateways on the pod's networks."""
    base = getattr(client().api, "base_url", "") or ""
    if "docker.sock" not in base and not base.startswith(("http+docker://localhost", "unix:")):
        return []
    try:
        with open("/proc/net/fib_trie") as f:
            return parse_local_addresses(f.read())
    except OSError:
        return []


def require_image(name: str, setting: str) -> None:
    try:
        client().images.get(name)
    except ImageNotFound:
        raise ImageMissing(name, setting) from None


@dataclass(frozen=True)
class Endpoint:
    address: str
    gateway: str | None  # the Docker host's address on that network


def _endpoint(container, network: str) -> Endpoint:
    """The proxy's own endpoint is the truth about a network: Debian's
    docker.io 20.10 lists no gateway in the default bridge's IPAM config, but
    every endpoint carries it."""
    nets = container.attrs["NetworkSettings"]["Networks"]
    ep = nets.get(network) or {}
    if not ep.get("IPAddress"):
        raise SandboxStartError(f"the proxy container got no address on network '{network}'")
    return Endpoint(ep["IPAddress"], ep.get("Gateway") or None)


_PORT_CLASH = re.compile(r"(port is already allocated|address already in use)", re.I)
_PORT_IN_MSG = re.compile(r"127\.0\.0\.1:(\d+)")


def route_out(egress: EgressNetwork, endpoint: Endpoint) -> str | None:
    """The pod's default gateway: the proxy's own endpoint's, on a network
    that leads out; none on an internal one. A network that should lead out
    but gave no gateway is an error now, not a pod that silently reaches nothing."""
    if egress.internal:
        return None
    if not endpoint.gateway:
        raise SandboxStartError(
            f"egress_network '{egress.name}' gave the proxy no gateway, so the pod would have no route out",
            hint=f"check `docker network inspect {egress.name}`; use a bridge network with a gateway, or an "
                 "`--internal` network if the pod should reach only that network")
    return endpoint.gateway


def _start_proxy(proxy) -> None:
    try:
        proxy.start()
    except APIError as exc:
        text = str(exc)
        if _PORT_CLASH.search(text):
            m = _PORT_IN_MSG.search(text)
            raise PortClash(int(m.group(1)) if m else None) from None
        raise


def create_pod(settings: podspec.PodSettings, egress: EgressNetwork, files: dict[str, bytes],
               rules: dict, startup_timeout: float) -> Pod:
    """Create and start one kernel's pod; on any failure remove what was made.
    `rules` are the arguments of `firewall.render_ipv4_rules` that the
    provisioner knows; the addresses only the engine knows are added here."""
    try:
        t: dict[str, float] = {}
        proxy, ingress, holder = _start_proxy_side(settings, egress, files, rules, startup_timeout, _Clock(t))
        return start_kernel(settings, Pod(settings.kernel_id, proxy.id, "", ingress, timings=t, holder_id=holder),
                            startup_timeout)
    except BaseException:
        remove_pod(settings.kernel_id)
        raise


def prepare_pod(settings: podspec.PodSettings, egress: EgressNetwork, files: dict[str, bytes],
                rules: dict, startup_timeout: float) -> Pod:
    """The proxy side of a pod, with no kernel yet (a warm pool's pod):
    networks, proxy and firewall, the deny-all policy in `files`."""
    try:
        t: dict[str, float] = {}
        if settings.routed:
            raise ValueError("a routed pod is never prepared ahead (no warm pool for it)")
        proxy, ingress, _ = _start_proxy_side(settings, egress, files, rules, startup_timeout, _Clock(t))
        return Pod(settings.kernel_id, proxy.id, "", ingress, started={proxy.id: _started_at(proxy.id)}, timings=t)
    except BaseException:
        remove_pod(settings.kernel_id)
        raise


def start_kernel(settings: podspec.PodSettings, pod: Pod, startup_timeout: float = 20.0) -> Pod:
    """Start the kernel container in a pod whose proxy side is up (new, kept
    across a restart, or claimed from the pool): the pod with its new kernel."""
    c = client()
    clock = _Clock(dict(pod.timings))
    if pod.holder_id:
        with clock("link step"):
            _write_resolv_conf(settings)
            _run_one_shot(podspec.link_create_kwargs(settings, pod.holder_id), "link step", startup_timeout,
                          pod.holder_id)
    with clock("kernel create"):
        kernel = c.containers.create(**podspec.kernel_create_kwargs(settings, pod.holder_id or pod.proxy_id))
    with clock("kernel start"):
        kernel.start()
    with clock("inspect"):
        started = {cid: _started_at(cid) for cid in (pod.proxy_id, kernel.id, pod.holder_id) if cid}
    return Pod(settings.kernel_id, pod.proxy_id, kernel.id, pod.ingress_network, started=started,
               timings=clock.into, holder_id=pod.holder_id)


def _write_resolv_conf(settings: podspec.PodSettings) -> None:
    path = os.path.join(settings.connection_dir, "resolv.conf")
    with open(path, "w") as f:
        f.write(podspec.resolv_conf(settings))
    os.chmod(path, 0o644)


def proxy_still_set_up(pod: Pod) -> bool:
    """The pod's proxy (and a routed pod's holder) runs and has not started
    again since it was set up."""
    for cid in (c for c in (pod.proxy_id, pod.holder_id) if c):
        try:
            state = client().api.inspect_container(cid)["State"]
        except NotFound:
            return False
        if not state.get("Running") or (pod.started or {}).get(cid) != state.get("StartedAt"):
            return False
    return True


def remove_kernel_container(pod: Pod) -> None:
    """Only the kernel (a restart keeps the proxy side)."""
    if pod.kernel_id_container:
        try:
            _remove_container(client().containers.get(pod.kernel_id_container))
        except NotFound:
            pass


def rename_proxy(pod: Pod, kernel_id: str) -> None:
    """A claimed pool pod's proxy takes its kernel's name (names are for
    people; labels, which cannot change, keep the pool pod's id)."""
    try:
        client().api.rename(pod.proxy_id, naming.resource_name(kernel_id, "proxy"))
    except APIError as exc:
        log.info("awf-kernel %s: proxy keeps its pool name: %s", kernel_id, exc)


def _start_proxy_side(settings, egress, files, rules, startup_timeout, clock) -> tuple:
    c = client()
    ingress = holder = None
    if settings.routed:
        with clock("holder"):
            holder = c.containers.create(**podspec.holder_create_kwargs(settings))
            holder.start()
    if egress.internal:
        with clock("ingress network"):
            ingress = c.networks.create(**podspec.ingress_network_kwargs(settings)).name

    with clock("proxy create"):
        proxy = c.containers.create(**podspec.proxy_create_kwargs(settings))
        if ingress:
            c.networks.get(egress.name).connect(proxy)
        proxy.put_archive("/etc/awf", _tar(files))
    with clock("proxy start"):
        _start_proxy(proxy)
        proxy.reload()

    out = _endpoint(proxy, egress.name)
    inbound = _endpoint(proxy, ingress or egress.name)
    default_gw = route_out(egress, out)
    host_addresses = sorted({*egress.host_addresses, *engine_host_addresses(),
                             *(g for g in (out.gateway, inbound.gateway) if g)})
    env = {
        "AWF_IPV4_RULES": firewall.render_ipv4_rules(**rules, server_address=inbound.gateway,
                                                     host_addresses=host_addresses, routed=settings.routed),
        "AWF_IPV6_RULES": firewall.render_ipv6_rules(),
        "AWF_WAIT_TCP": " ".join(str(p) for p in (ports.SQUID_EXPLICIT, ports.SQUID_HTTP_INTERCEPT,
                                                  ports.SQUID_HTTPS_INTERCEPT, ports.RESOLVER_LISTEN)),
        "AWF_WAIT_UDP": str(ports.RESOLVER_LISTEN),
        "AWF_WAIT_SECONDS": str(max(1, int(startup_timeout))),
        "AWF_EGRESS_IP": out.address,
        "AWF_INGRESS_IP": inbound.address,
        "AWF_DEFAULT_GW": default_gw or "none",
    }
    if holder:
        env.update({"AWF_LINK_IF": link.PROXY_IF, "AWF_LINK_PEER_IF": link.KERNEL_IF,
                    "AWF_LINK_ADDRESS": f"{link.PROXY_ADDRESS}/{link.PREFIX}"})
    with clock("firewall step"):
        _run_one_shot(podspec.firewall_create_kwargs(settings, proxy.id, env, holder.id if holder else None),
                      "firewall step", startup_timeout, proxy.id)
    return proxy, ingress, holder.id if holder else None


class _Clock:
    """Times the named steps of a pod's start into one dict."""

    def __init__(self, into: dict[str, float]):
        self.into = into

    def __call__(self, name: str):
        return _Step(self.into, name)


class _Step:
    def __init__(self, into: dict[str, float], name: str):
        self.into, self.name = into, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.into[self.name] = self.into.get(self.name, 0.0) + time.perf_counter() - self.t


def _started_at(container_id: str) -> str:
    return client().api.inspect_container(container_id)["State"]["StartedAt"]


def _run_one_shot(kwargs: dict, what: str, timeout: float, beside_id: str) -> None:
    """Run one of the pod's one-shot root steps (the firewall, the link) to
    its end; any failure is the pod's, with both containers' logs."""
    c = client()
    step = c.containers.create(**kwargs)
    try:
        step.start()
        try:
            result = step.wait(timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            raise SandboxStartError(f"the pod's {what} did not finish in {timeout:.0f} s",
                                    logs=_logs(step) + _logs(c.containers.get(beside_id))) from exc
        if result.get("StatusCode") != 0:
            raise SandboxStartError(f"the pod's {what} failed; no kernel was started",
                                    logs=_logs(step) + _logs(c.containers.get(beside_id)))
    finally:
        _remove_container(step)


# One exec argument or variable may hold at most 128 KiB (Linux's MAX_ARG_STRLEN).
_MAX_POLICY_FILE = 96 * 1024


def apply_policy(proxy_id: str, files: dict[str, bytes], generation: str, timeout: float = 5.0) -> float:
    """Put new policy files in force in a running proxy (awf-reload) and
    return the seconds it took. Raises SandboxStartError when the proxy does
    not confirm the generation; the caller then stops the pod.

    The files travel in the exec's environment, not through the archive API:
    that one re-mounts the container's bind mounts from their host paths,
    and a claimed pool pod's audit folder was renamed after its kernel."""
    t = time.perf_counter()
    env = {}
    for name, var in (("squid.conf", "AWF_SQUID_CONF"), ("resolver.json", "AWF_RESOLVER_JSON")):
        encoded = base64.b64encode(files[name]).decode()
        if len(encoded) > _MAX_POLICY_FILE:
            raise SandboxStartError(f"the rendered {name} is {len(files[name])} bytes, too large to apply to a "
                                    "running pod", hint="allow fewer domains (a `*.domain` entry covers many)")
        env[var] = encoded
    result = client().api.exec_create(proxy_id, ["/usr/local/bin/awf-reload", generation, str(max(1, int(timeout)))],
                                      user=str(ports.PROXY_UID), environment=env)
    output = client().api.exec_start(result["Id"])
    code = client().api.exec_inspect(result["Id"]).get("ExitCode")
    if code != 0:
        raise SandboxStartError(f"the pod's proxy did not put policy {generation} in force",
                                logs=(output or b"").decode(errors="replace"))
    return time.perf_counter() - t


def exit_report(container_id: str, tail: int = 30) -> str:
    """Why a kernel container ended, for the server's log: its state (exit
    code, OOM kill, error) and its last lines of output."""
    try:
        container = client().containers.get(container_id)
    except NotFound:
        return "(the container is gone)"
    state = container.attrs.get("State") or {}
    head = (f"exit code {state.get('ExitCode')}, OOM-killed {bool(state.get('OOMKilled'))}"
            + (f", error {state['Error']!r}" if state.get("Error") else ""))
    return head + "; last output:\n" + _logs(container, tail)


def _logs(container, tail: int = 40) -> str:
    try:
        return container.logs(tail=tail).decode(errors="replace")
    except (APIError, NotFound):
        return ""


def _tar(files: dict[str, bytes]) -> bytes:
    """The rendered configuration as a tar owned by the proxy's uid, for put_archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({name.rsplit("/", 1)[0] for name in files if "/" in name})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, time.time()
            info.uid = info.gid = ports.PROXY_UID
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            info.uid = info.gid = ports.PROXY_UID
            info.mtime = time.time()
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pod_state(pod: Pod) -> tuple[bool, int | None]:
    """The kernel's (running, exit code), judged on the whole pod: a kernel
    whose proxy stopped, or any pod container that started again since the pod
    was made, counts as dead (fail closed), and its kernel is stopped."""
    states = {}
    for cid in (c for c in (pod.kernel_id_container, pod.proxy_id, pod.holder_id) if c):
        try:
            states[cid] = client().api.inspect_container(cid)["State"]
        except NotFound:
            states[cid] = {"Running": False, "ExitCode": -1}
    kernel = states[pod.kernel_id_container]
    if not kernel.get("Running"):
        return False, kernel.get("ExitCode")
    for cid, state in states.items():
        rerun = bool(pod.started) and pod.started.get(cid) not in (None, state.get("StartedAt"))
        if not state.get("Running") or rerun:
            log.warning("awf-kernel %s: stopping the kernel: pod container %s %s", pod.kernel_id, cid[:12],
                        "started again" if rerun else "is not running")
            signal_container(pod.kernel_id_container, 9)
            return False, -1
    return True, None


def signal_container(container_id: str, signum: int) -> None:
    try:
        client().api.kill(container_id, signal=int(signum))
    except NotFound:
        pass
    except APIError as exc:
        if exc.status_code != 409:  # 409: not running, nothing to signal
            raise


def _remove_container(container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as exc:
        if exc.status_code not in (404, 409):
            raise


_removals: set[threading.Thread] = set()
_removals_lock = threading.Lock()


def remove_pod_later(kernel_id: str, then: Callable[[], None] | None = None) -> None:
    """Remove a pod whose kernel has ended, in the background: stopping the
    proxy is most of a shutdown's time (the engine tears down its network and
    published ports), and nothing in a pod without a kernel can reach out
    (only the kernel's connections are ever forwarded). `then` runs after
    the removal (the kernel's ports go back to the cache only then). The
    threads are not daemons, so a server that exits waits for them; a server
    that is killed leaves a pod `awf-kernel gc` collects."""
    def run():
        try:
            remove_pod(kernel_id)
        except Exception as exc:  # noqa: BLE001 - gc collects what is left (it carries the labels)
            log.warning("awf-kernel %s: removing the pod failed (`awf-kernel gc` will): %s", kernel_id, exc)
        finally:
            if then is not None:
                then()
            with _removals_lock:
                _removals.discard(threading.current_thread())

    thread = threading.Thread(target=run, name=f"awf-kernel-remove-{kernel_id[:8]}")
    with _removals_lock:
        _removals.add(thread)
    thread.start()


def wait_for_removals(timeout: float = 60.0) -> bool:
    """Wait until every background removal of this process is done."""
    deadline = time.monotonic() + timeout
    while True:
        with _removals_lock:
            pending = list(_removals)
        if not pending:
            return True
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            with _removals_lock:
                return not _removals


def pod_ids(kernel_id: str) -> set[str]:
    """Every id this kernel's resources are labelled with: its own, and the
    pool pod's its kernel container runs in (POD)."""
    ids = {kernel_id}
    for container in client().api.containers(all=True, filters=naming.kernel_filter(kernel_id)):
        pod = (container.get("Labels") or {}).get(naming.POD)
        if pod:
            ids.add(pod)
    return ids


def pod_containers(kernel_id: str) -> list:
    """The kernel's pod containers (docker SDK objects), pool pods included."""
    c = client()
    return [container for pid in sorted(pod_ids(kernel_id))
            for container in c.containers.list(all=True, filters=naming.kernel_filter(pid))]


def remove_pod(kernel_id: str) -> None:
    """Remove every container and network labelled with this kernel id (or
    the pool pod's id its kernel ran in). Idempotent: what is already gone is fine."""
    c = client()
    ids = pod_ids(kernel_id)
    for pid in sorted(ids):
        for container in c.containers.list(all=True, filters=naming.kernel_filter(pid)):
            # kernel first: it holds the proxy's namespace
            if container.labels.get(naming.ROLE) == "kernel":
                _remove_container(container)
    for pid in sorted(ids):
        for container in c.containers.list(all=True, filters=naming.kernel_filter(pid)):
            _remove_container(container)
    for pid in sorted(ids):
        for net in c.networks.list(filters=naming.kernel_filter(pid)):
            try:
                net.remove()
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code not in (404, 409):
                    raise


@dataclass(frozen=True)
class LabelledPod:
    """One kernel's pod as its labels tell it (the broker rebuilds its table from these)."""
    kernel_id: str
    owner_uid: int | None          # None: missing, malformed, or the pod's members disagree
    proxy_id: str | None
    kernel_container_id: str | None
    ingress_network: str | None
    kernel_running: bool


def labelled_pods(owned: bool = True, server: str | None = None) -> list[LabelledPod]:
    """Every pod on the engine (only the broker's, which carry an owner, by
    default; only one broker's, by its server label), grouped by kernel id,
    found by label only."""
    c = client()
    selected = naming.kernel_filter(owned=owned, server=server)
    members: dict[str, dict] = {}
    owners: dict[str, set] = {}
    # The engine's own listing (Labels, State) in one call: no per-container
    # inspect, which fails when a container goes away meanwhile.
    for container in c.api.containers(all=True, filters=selected):
        labels = container.get("Labels") or {}
        kid = labels.get(naming.KERNEL_ID, "")
        members.setdefault(kid, {})[labels.get(naming.ROLE)] = container
        owners.setdefault(kid, set()).add(naming.owner_from_label(labels.get(naming.OWNER_UID)))
    networks: dict[str, str] = {}
    for net in c.networks.list(filters=selected):
        labels = net.attrs.get("Labels") or {}
        kid = labels.get(naming.KERNEL_ID, "")
        networks[kid] = net.name
        members.setdefault(kid, {})
        owners.setdefault(kid, set()).add(naming.owner_from_label(labels.get(naming.OWNER_UID)))
    out = []
    for kid, roles in sorted(members.items()):
        found = owners.get(kid, set())
        kernel, proxy = roles.get("kernel"), roles.get("proxy")
        out.append(LabelledPod(kid, next(iter(found)) if len(found) == 1 else None,
                               proxy["Id"] if proxy else None, kernel["Id"] if kernel else None,
                               networks.get(kid), bool(kernel and kernel.get("State") == "running")))
    return out


def container_pid(container_id: str) -> int | None:
    """The host pid of a process whose /proc/PID/root is the running
    container's file system as its processes see it, or None. Under runc
    that is its first process. Under gVisor the first process is the
    sandbox, whose root is an empty directory: the files the code sees are
    served by the container's gofer, so it is the gofer's."""
    try:
        attrs = client().api.inspect_container(container_id)
    except NotFound:
        return None
    state = attrs["State"]
    if not state.get("Running"):
        return None
    runtime = (attrs.get("HostConfig") or {}).get("Runtime") or ""
    if "runsc" in runtime or "gvisor" in runtime:
        return gvisor_gofer_pid(attrs["Id"])
    return state.get("Pid") or None


def gvisor_gofer_pid(container_id: str, proc: str = "/proc") -> int | None:
    """The pid of gVisor's gofer for this container (its command line names
    the container's bundle), or None. Only a root process counts: any user
    on the host can start a process with that command line, whose root
    would be the host's and would pass every check. (Its uids from
    `status`: a non-dumpable process's /proc folder is root's whoever runs it.)"""
    for entry in sorted(os.listdir(proc)):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "status")) as f:
                uids = next((line.split()[1:] for line in f if line.startswith("Uid:")), None)
            if uids is None or any(u != "0" for u in uids):
                continue
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] == b"runsc-gofer" and any(container_id.encode() in a for a in argv):
            return int(entry)
    return None
