"""`awf-provisioner`: jupyter_client's hooks mapped onto a sandbox pod.

The provisioner only gathers settings and calls the pure builders
(awf_kernel.render) and the pod's lifecycle (awf_kernel.sandbox.docker); the
latter blocks, so every call goes through `_docker` into a worker thread.
Hooks mirror `subprocess.Popen` as jupyter_client expects: `poll` and `wait`
read the kernel container's state, signals go to that container.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.provisioning import KernelProvisionerBase
from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Float, Int, List, Unicode, default, validate

from . import __version__, addresses, hub_mode, naming, policy_source
from . import protect, trust
from .broker.client import BrokerClient, BrokerError
from .errors import InvalidSetting, PolicyError, SandboxStartError
from .policy import DomainRule, Policy, PolicyRequest, parse_domains, resolve_policy, widens
from .render import pod as podspec, ports
from .runtime import check as runtime_check
from .runtime import routed as runtime_routed
from .render.proxy_files import render_proxy_files
from .sandbox import docker as sandbox
from .sandbox.pool import POOL, ReadyPod

ADDONS_DIR = pathlib.Path(__file__).parent / "kernel_side"
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
POOL_REFILL_DELAY = 3.0  # seconds: about a kernel's boot on a busy 2-core machine
# A size both Docker's mem_limit and a tmpfs `size=` read alike: bytes, or a number and k/m/g.
_DOCKER_SIZE = re.compile(r"[0-9]+[kmgKMG]?")
# Host directories that must never be shared into a kernel as its working
# directory: mounting them would hand the kernel the Docker socket or the host.
_FORBIDDEN_WORKDIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/root/.docker",
                       "/run", "/sbin", "/sys", "/usr", "/var", "/var/run", "/var/lib/docker"}


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities(paths) -> dict[str, tuple[int, int] | None]:
    return {p: _identity(p) for p in paths if p}


class ResolvedPolicy(NamedTuple):
    """`AWFProvisioner.resolve_policy`'s answer: the effective policy and what it was made from."""

    policy: Policy
    ceiling: tuple[DomainRule, ...] | None  # the admin's domain_ceiling; None = no ceiling
    request: PolicyRequest | None           # the notebook's (or AWF_POLICY's) request; None = none
    pending: PolicyRequest | None = None    # an untrusted notebook's request, held until the user confirms it


@dataclass(frozen=True)
class LaunchPlan:
    """What one start of the kernel will be, decided in `pre_launch` (at every
    start and restart) and carried out by `launch_kernel`. Pure data: tests
    compare it whole; nothing here has touched the host or Docker yet."""

    policy: Policy
    ceiling: tuple[DomainRule, ...] | None
    request: PolicyRequest | None
    egress: sandbox.EgressNetwork
    env: Mapping[str, str]          # the kernel's environment from the allowlist, never the server's
    workdir: str | None             # the notebook's folder, mounted read-write at the same path
    notebook: str | None            # the notebook file, mounted read-only over it
    uid: int
    gid: int
    mounts: tuple[podspec.Mount, ...]  # the notebook file and extra_mounts (protection is added at launch)
    cmd: tuple[str, ...]
    pending: PolicyRequest | None = None  # the untrusted notebook's request, not applied (awf_kernel.trust)


class AWFProvisioner(KernelProvisionerBase):
    """Runs the kernel in a Docker pod whose only way out is a filtering proxy.

    Every setting can be given in the server's config (`c.AWFProvisioner.x`)
    or in the kernel spec (`awf-kernel install --set x=...`); the kernel spec
    wins. Notebook metadata can only narrow what these settings permit.
    """

    # --- hub mode ---------------------------------------------------------------
    broker = Unicode("", config=True, help="""
        Hub mode: the address of the awf-kernel broker (for example
        `unix:///run/awf-kernel/broker.sock`). When set, this server never
        calls Docker: it sends the notebook's request and the launch facts to
        the broker, whose own config is the only source of admin bounds; the
        admin settings here are ignored (and logged as ignored). A broker that
        cannot be reached or refuses is an error at kernel start, never a
        fallback to local Docker. Empty (default): single-user mode.""")

    # --- images -------------------------------------------------------------
    image = Unicode(f"awf-kernel/kernel:{__version__}", config=True, help="""
        Image the kernel runs in. Any image with Python and ipykernel works; it
        runs as `kernel_uid` with no capabilities. Build the default with
        `awf-kernel build`. Set by: server config or kernel spec.""")
    proxy_image = Unicode(f"awf-kernel/proxy:{__version__}", config=True, help="""
        Image of the pod's proxy (Squid, the filtering resolver, the firewall
        step). Built by `awf-kernel build`; change it only to a rebuilt copy.""")
    kernel_cmd = List(Unicode(), ["python3", "-m", "ipykernel_launcher", "-f", podspec.CONNECTION_FILE],
                      config=True, help="Command that starts the kernel inside `image`.")
    runtime = Unicode("", config=True, help="""
        The Docker (OCI) runtime of the kernel container; '' (default) is the
        engine's default. For gVisor, `runsc` as registered in daemon.json
        (`{"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}`): with its own
        network stack the kernel gets a namespace of its own, routed through
        the proxy (no warm pool then); with `"runtimeArgs": ["--network=host"]`
        it shares the proxy's, as under runc. A runtime under which the pod's
        rules would not hold is refused at kernel start (awf_kernel.runtime).
        The proxy side always runs on the engine's default.""")

    # --- policy (admin bounds) ----------------------------------------------
    allow_domains = List(Unicode(), [], config=True, help="""
        Domains every kernel may reach, whatever the notebook says (grammar:
        `host`, `*.host` subdomains only, `.host` both; presets like `@pypi`).
        Default: none, so a notebook without metadata reaches nothing.""")
    block_domains = List(Unicode(), [], config=True, help="""
        Domains no kernel may reach, even if allowed elsewhere (deny wins).""")
    domain_ceiling = List(Unicode(), None, allow_none=True, config=True, help="""
        The most a notebook may ask for. None (default): notebooks may ask for
        any domain. A list: a notebook asking for a domain outside it gets an
        error at kernel start and no kernel. [] forbids notebook requests.""")

    # --- network -------------------------------------------------------------
    egress_network = Unicode("bridge", config=True, help="""
        Docker network through which the proxy reaches the outside. Only the
        proxy is attached to it. An `--internal` network works too (a private
        per-kernel network then publishes the kernel's ports).""")
    dns_servers = List(Unicode(), [], config=True, help="""
        Resolvers the pod's filtering resolver forwards allowed names to.
        Empty (default): the resolvers Docker gives containers on
        `egress_network`. Only allowed names are ever forwarded.""")

    allow_private_destinations = List(Unicode(), [], config=True, help="""
        IPv4 networks (CIDR) that allowed names may resolve to although they
        are not globally routable: an intranet site, a corporate mirror.
        Default: none, so an allowed name whose DNS answer is private, shared,
        loopback, link-local or otherwise special is refused (by Squid, the
        resolver and the pod's rules). Loopback and link-local (cloud
        metadata) cannot be opted in.""")

    # --- kernel container ------------------------------------------------------
    kernel_uid = Int(None, allow_none=True, config=True, help="""
        uid the kernel runs as. Default: the Jupyter server's uid, or 1000 when
        the server runs as root (the kernel never runs as root).""")
    kernel_gid = Int(None, allow_none=True, config=True, help="gid of the kernel (default: like kernel_uid).")
    mem_limit = Unicode("2g", config=True, help="Memory limit of the kernel container (Docker syntax, '' = none).")
    cpu_limit = Float(1.0, config=True, help="CPUs the kernel may use (0 = no limit).")
    pids_limit = Int(512, config=True, help="Most processes/threads in the kernel container (0 = no limit).")
    mount_workdir = Bool(True, config=True, help="""
        Mount the notebook's folder into the kernel at the same path (read-write)
        and start there. System folders and / are never mounted.""")
    extra_mounts = List(Unicode(), [], config=True, help="""
        More bind mounts for the kernel, as `HOST_PATH:CONTAINER_PATH[:ro]`.""")
    deny_write = List(Unicode(), [], config=True, help="""
        More paths a kernel may not change or create in the folders it can
        write (the notebook's folder, read-write `extra_mounts`), on top of a
        mandatory list (awf_kernel.protect.DENY_WRITE: shell startup files,
        ~/.jupyter, ~/.local, ~/.config, ~/.ssh, git hooks ...) that cannot be
        removed. Each entry is `~/path` (in the server user's and the kernel
        user's home), `/absolute/path`, or `name/like/this` (in the root of
        every writable folder); end it with `/` if it is a folder. Existing
        paths are mounted read-only; missing ones are held by an empty
        placeholder made on the host while the kernel runs.""")
    deny_read = List(Unicode(), [], config=True, help="""
        More paths a kernel may not read (nor change) in the folders it can
        write, on top of a mandatory list (awf_kernel.protect.DENY_READ: SSH
        and GnuPG keys, cloud and registry credentials, browser profiles,
        Jupyter's runtime folder ...). The kernel sees an empty folder or file
        there. Same syntax as `deny_write`.""")

    env_allowlist = List(Unicode(), ["LANG", "LC_*", "TZ", "JPY_SESSION_NAME"], config=True, help="""
        Names (fnmatch patterns) of the launcher's environment variables passed
        to the kernel. Nothing else of the server's environment (tokens!)
        reaches the kernel. The kernel spec's `env` is always passed.""")
    audit_dir = Unicode(config=True, help="""
        Folder where each kernel's egress audit trail is kept (one subfolder per
        kernel id, kept after the kernel ends; `awf-kernel logs` reads it).""")
    cell_notices = Bool(True, config=True, help="""
        After each cell, show the hosts the sandbox denied during it and the
        metadata line that would allow them (an IPython extension mounted
        read-only into the kernel; works with any image that has ipykernel).""")
    require_trust = Bool(True, config=True, help="""
        Consent for notebooks from elsewhere: a notebook file's `metadata.awf`
        applies only when the user trusts the notebook (Jupyter's notebook
        trust: JupyterLab's "Trust Notebook", `jupyter trust`, or a notebook
        the user saved themselves). Until then its kernel gets the admin policy
        alone and the request waits for the user's confirmation. A launcher
        that runs a notebook on purpose is explicit consent: a policy it passes
        (AWF_POLICY: papermill's engine, nbclient, `awf-kernel record`), or
        AWF_NOTEBOOK_CONSENT=1 beside the notebook's name (nbval's plugin).
        False: every notebook's request applies as soon as it runs.""")
    allow_record_mode = Bool(True, config=True, help="""
        Whether a notebook may ask for record mode (`"awf": {"mode": "record"}`),
        which lets through everything the admin bounds permit and logs it.
        Only the launcher or the notebook file can ask, never the kernel.""")
    read_only_image = Bool(True, config=True, help="""
        Run the kernel with its image read-only; /tmp (and HOME, which is
        /tmp) is a tmpfs of `tmp_size`, so a kernel cannot fill the host's
        disk through its container layer. `pip install` from a cell then
        installs into /tmp/.local. Turn off only for an image that must write
        elsewhere.""")
    tmp_size = Unicode("512m", config=True, help="""
        Size of the kernel's /tmp (tmpfs, counted against mem_limit) when
        read_only_image is on (Docker syntax, '' = no size limit).""")
    pool_size = Int(1, config=True, help="""
        Warm pool: how many pods this server keeps ready (proxy up, rules in
        place, a deny-all policy, no kernel), so a kernel start only puts its
        policy in force and starts the kernel container. The notebook's
        policy, mounts and uid are exactly those of a cold start; a pod is
        never reused. 0 disables the pool. Each ready pod holds about 25 MiB
        and five loopback ports; `awf-kernel gc` collects those of a server
        that is gone.""")
    startup_timeout = Float(60.0, config=True, help="""
        Seconds a pod may take to start: the proxy's readiness, the firewall
        step, and the time jupyter_client waits before it calls a start stable.""")

    # --- validation: every setting is checked when it is set -----------------------
    # (server config, kernel spec, `awf-kernel install --set`), so a bad value is
    # an error naming the setting then, not at every kernel start.

    @validate("allow_domains", "block_domains", "domain_ceiling")
    def _valid_domains(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if value is not None:
            try:
                parse_domains(value, f"AWFProvisioner.{name}")
            except PolicyError as exc:
                raise InvalidSetting(exc.message, hint=exc.hint) from None
        return value

    @validate("allow_private_destinations")
    def _valid_private_destinations(self, proposal):
        try:
            addresses.parse_private_destinations(proposal["value"])
        except addresses.DestinationError as exc:
            raise InvalidSetting(exc.message, hint=exc.hint) from None
        return proposal["value"]

    @validate("dns_servers")
    def _valid_dns_servers(self, proposal):
        for server in proposal["value"]:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidSetting(f"dns_servers: {server!r} is not an IP address",
                                     hint="give resolver addresses, e.g. dns_servers=10.0.0.2,10.0.0.3") from None
        return proposal["value"]

    @validate("kernel_uid", "kernel_gid")
    def _valid_ids(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if value is not None and (value < 0 or value in (0, ports.PROXY_UID)):
            raise InvalidSetting(f"{name} {value} is not allowed: 0 is root and {ports.PROXY_UID} is the "
                                 "proxy's, the only id whose traffic may leave the pod",
                                 hint=f"set AWFProvisioner.{name} to an ordinary user's id, or leave it unset")
        return value

    @validate("extra_mounts")
    def _valid_extra_mounts(self, proposal):
        try:
            podspec.parse_mounts(proposal["value"])
        except ValueError as exc:
            raise InvalidSetting(str(exc), hint="write HOST_PATH:CONTAINER_PATH or HOST_PATH:CONTAINER_PATH:ro, "
                                                "both absolute") from None
        return proposal["value"]

    @validate("deny_write", "deny_read")
    def _valid_deny_entries(self, proposal):
        name = proposal["trait"].name
        try:
            return protect.check_entries(proposal["value"], name)
        except ValueError as exc:
            raise InvalidSetting(str(exc), hint=f"e.g. {name}=~/projects/secret,/srv/shared/keys/") from None

    @validate("mem_limit", "tmp_size")
    def _valid_size(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if value and not _DOCKER_SIZE.fullmatch(value):
            raise InvalidSetting(f"{name}: {value!r} is not a size in Docker's syntax",
                                 hint=f"e.g. {name}=2g, 512m or 1048576 (bytes); '' for none")
        return value

    @validate("cpu_limit", "pids_limit", "pool_size")
    def _valid_limit(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if value < 0:
            raise InvalidSetting(f"{name}: {value!r} is negative", hint=f"{name}=0 means no limit")
        return value

    @validate("startup_timeout")
    def _valid_timeout(self, proposal):
        if not proposal["value"] > 0:
            raise InvalidSetting(f"startup_timeout: {proposal['value']!r} is not a positive number of seconds",
                                 hint="e.g. startup_timeout=60")
        return proposal["value"]

    @validate("image", "proxy_image", "egress_network", "audit_dir")
    def _valid_name(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if not value.strip() or value != value.strip():
            raise InvalidSetting(f"{name}: {value!r} is empty or has surrounding spaces",
                                 hint=f"see `AWFProvisioner.{name}` in the docs for what it names")
        return value

    @validate("runtime")
    def _valid_runtime(self, proposal):
        if proposal["value"] and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", proposal["value"]):
            raise InvalidSetting(f"runtime: {proposal['value']!r} is not a Docker runtime name",
                                 hint="a name from `docker info` (Runtimes), e.g. runtime=runsc; '' for the default")
        return proposal["value"]

    @validate("kernel_cmd")
    def _valid_kernel_cmd(self, proposal):
        if not proposal["value"]:
            raise InvalidSetting("kernel_cmd is empty", hint="e.g. the default, python3 -m ipykernel_launcher -f "
                                                              + podspec.CONNECTION_FILE)
        return proposal["value"]

    @default("audit_dir")
    def _audit_dir_default(self) -> str:
        return str(pathlib.Path(jupyter_data_dir()) / "awf-kernel" / "audit")

    # --- state -------------------------------------------------------------------
    pod: sandbox.Pod | None = None
    plan: LaunchPlan | None = None  # made by pre_launch (every start and restart), read by launch_kernel
    ports_cached = False
    connection_dir: str | None = None

    @property
    def has_process(self) -> bool:
        return self.pod is not None or self._hub_kernel

    @property
    def _km(self) -> Any:
        """The KernelManager this provisioner serves (its parent): ports, connection file."""
        return self.parent

    def _kernel_ports(self) -> tuple[int, ...]:
        """The five ZMQ ports of the connection info, in PORT_NAMES order."""
        info: dict[str, Any] = dict(self.connection_info)
        return tuple(int(info[name]) for name in PORT_NAMES)

    async def _docker(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- start -------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called from `KernelManager.pre_start_kernel` at every start and
        restart: re-reads the policy, so edited metadata applies on restart.
        Does not call super(): the base starts from the server's environment."""
        try:
            naming.valid_kernel_id(self.kernel_id)  # joined into folders, names and labels below
        except ValueError as exc:
            raise SandboxStartError(str(exc), hint="let jupyter_client choose the kernel id") from None
        if self.kernel_id.startswith(naming.POOL_ID_PREFIX):
            raise SandboxStartError(f"kernel id {self.kernel_id!r} starts with {naming.POOL_ID_PREFIX!r}, which "
                                    "names warm pool pods", hint="let jupyter_client choose the kernel id")
        if self.broker:
            return await self._pre_launch_hub(kwargs)
        launcher_env = dict(kwargs.pop("env", os.environ))  # what the launcher gave, even if empty
        kwargs.pop("transport_encryption", None)
        kwargs.pop("extra_arguments", None)
        cwd = kwargs.pop("cwd", None)

        self._policy_env = {k: launcher_env[k] for k in (policy_source.POLICY_ENV, policy_source.SESSION_ENV,
                                                          policy_source.CONSENT_ENV) if launcher_env.get(k)}
        resolved = self.resolve_policy(launcher_env)
        if resolved.pending is not None:
            self.log.warning("awf-kernel %s: the notebook is not trusted; its request %s waits for the user's "
                             "confirmation (admin policy only until then)", self.kernel_id,
                             json.dumps(resolved.pending.written()))
        self.log.info("awf-kernel %s: effective policy %s", self.kernel_id, json.dumps(resolved.policy.to_json()))
        # Four questions to the engine, asked at once (each is a round trip);
        # the first failing one, in this order, is the error the user sees.
        # The runtime is refused before any container exists.
        images = [asyncio.ensure_future(self._docker(sandbox.require_image, image, setting))
                  for image, setting in ((self.image, "image"), (self.proxy_image, "proxy_image"))]
        rt_answer = asyncio.ensure_future(self._docker(runtime_check, self.runtime))
        egress_answer = asyncio.ensure_future(self._docker(sandbox.egress_network, self.egress_network))
        await asyncio.wait([*images, rt_answer, egress_answer])
        for image_answer in images:
            image_answer.result()
        rt, egress = rt_answer.result(), egress_answer.result()
        self._routed = runtime_routed(rt)

        # A routed pod (render/link.py) is never made ahead: pool pods share the proxy's namespace.
        if self._routed and self.pool_size > 0:
            self.log.info("awf-kernel %s: runtime %s runs its own network stack: a pod of its own, routed through "
                          "the proxy (the warm pool's pods share the proxy's namespace, so none is used)",
                          self.kernel_id, rt.name)
        if self._kept is None and self.pool_size > 0 and not self._routed:
            await self._claim_from_pool(egress)
        self._connection_file(launcher_env)
        self.plan = self.make_plan(launcher_env, cwd, resolved, egress)
        return {**kwargs, "cmd": list(self.plan.cmd)}

    # --- warm pool ---------------------------------------------------------------
    def _pool_key(self, egress: sandbox.EgressNetwork) -> tuple:
        """What a pool pod's proxy side depends on: pods are shared only between
        kernels whose settings would have made the same proxy side."""
        return (self.proxy_image, egress.name, egress.internal, tuple(self.dns_servers),
                tuple(self.allow_private_destinations), os.path.realpath(self.audit_dir), self._server_label(),
                self.startup_timeout)

    def _server_label(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    async def _claim_from_pool(self, egress: sandbox.EgressNetwork) -> None:
        """Take a ready pod (its published ports become this kernel's), and
        top the pool up in the background. A manager whose ports are pinned
        by its caller cannot use one."""
        km = self._km
        key = self._pool_key(egress)
        pinned = any(getattr(km, name) for name in PORT_NAMES)
        if not pinned and km.cache_ports and not self.ports_cached:
            ready = await self._docker(POOL.take, key)
            if ready is not None:
                for name, port in zip(PORT_NAMES, ready.ports):
                    setattr(km, name, port)
                self.ports_cached = True  # returned to the cache when the kernel ends
                self._claimed = ready
        # After a claim, the refill waits until the claimed kernel has booted (it
        # would take the CPU from it); after a cold start, it begins at once.
        POOL.fill(key, self.pool_size, lambda: self._make_pool_pod(egress), _discard_pool_pod,
                  delay=POOL_REFILL_DELAY if self._claimed is not None else 0.0)

    def _make_pool_pod(self, egress: sandbox.EgressNetwork) -> ReadyPod:
        """One pod with its proxy side up and a deny-all policy (runs in the pool's thread)."""
        pool_id = naming.POOL_ID_PREFIX + uuid.uuid4().hex[:20]
        lpc = LocalPortCache.instance()
        pod_ports = tuple(lpc.find_available_port("127.0.0.1") for _ in PORT_NAMES)
        base = pathlib.Path(self.audit_dir)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = base / pool_id
        audit.mkdir()
        os.chmod(audit, 0o777)  # written by the proxy's uid 13; the parent (0700) keeps others out
        settings = podspec.PodSettings(
            kernel_id=pool_id, proxy_image=self.proxy_image, kernel_image=self.image, kernel_cmd=(),
            kernel_ports=pod_ports,
            network=egress.name if not egress.internal else podspec.ingress_network_name(pool_id),
            uid=65534, gid=65534, connection_dir="", audit_dir=str(audit), server=self._server_label(),
            dns_servers=tuple(self.dns_servers))
        files, _ = render_proxy_files(Policy(), kernel_id=pool_id, notebook=None, upstreams=self.dns_servers,
                                      allowed_private=self.allow_private_destinations)
        rules = {"kernel_ports": pod_ports, "dns_upstreams": list(self.dns_servers),
                 "allowed_private": list(self.allow_private_destinations)}
        try:
            pod = sandbox.prepare_pod(settings, egress, files, rules, self.startup_timeout)
        except BaseException:
            _discard_pool_pod(ReadyPod(sandbox.Pod(pool_id, "", "", None), pod_ports, str(audit)))
            raise
        return ReadyPod(pod, pod_ports, str(audit))

    def _connection_file(self, launcher_env: dict[str, str]) -> None:
        """Ports (kept across restarts) and the manager's connection file."""
        km = self._km
        if km.cache_ports and not self.ports_cached:
            lpc = LocalPortCache.instance()
            for name in PORT_NAMES:
                if not getattr(km, name):  # a port the caller pinned is kept
                    setattr(km, name, lpc.find_available_port(km.ip))
            self.ports_cached = True
        km.write_connection_file(jupyter_session=launcher_env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()

    async def _pre_launch_hub(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Hub mode: gather the request and the launch facts; decide nothing."""
        launcher_env = dict(kwargs.pop("env", os.environ))
        self._policy_env = {k: launcher_env[k] for k in (policy_source.POLICY_ENV, policy_source.SESSION_ENV,
                                                          policy_source.CONSENT_ENV) if launcher_env.get(k)}
        kwargs.pop("transport_encryption", None)
        kwargs.pop("extra_arguments", None)
        cwd = kwargs.pop("cwd", None)
        ignored = hub_mode.ignored_settings(self)
        if ignored:
            self.log.warning("awf-kernel %s: hub mode (broker %s): ignoring %s set on this side; the broker's "
                             "config decides them", self.kernel_id, self.broker, ", ".join(ignored))
        self._connection_file(launcher_env)
        try:
            self._hub_request = hub_mode.start_request(
                kernel_id=self.kernel_id, connection_info=dict(self.connection_info), launcher_env=launcher_env,
                cwd=cwd, root_dir=self._root_dir(), image=self.image,
                default_image=str(self.traits()["image"].default()),
                spec_dir=getattr(self.kernel_spec, "resource_dir", None), log=self.log,
                require_trust=self.require_trust, trust_parent=self.parent)
        except BaseException:
            self._km.cleanup_connection_file()
            self._return_ports()
            raise
        return {**kwargs, "cmd": ["awf-broker"]}

    def _broker(self) -> BrokerClient:
        return BrokerClient(self.broker)

    async def _launch_hub(self) -> KernelConnectionInfo:
        try:
            reply = await self._broker().acall("start", **self._hub_request)
        except BaseException:
            for step in (self._km.cleanup_connection_file, self._return_ports):
                try:
                    step()
                except Exception:  # noqa: BLE001 - the broker's answer is what the user must see
                    self.log.exception("awf-kernel %s: cleanup after a refused start failed", self.kernel_id)
            raise
        self._hub_kernel = True
        self._hub_policy = reply.get("policy") if isinstance(reply.get("policy"), dict) else None
        for warning in reply.get("warnings") or ():
            self.log.warning("awf-kernel %s: %s", self.kernel_id, warning)
        self.log.info("awf-kernel %s: started by the broker; effective policy %s", self.kernel_id,
                      json.dumps(reply.get("policy")))
        return self.connection_info

    def make_plan(self, launcher_env: dict[str, str], cwd: str | None, resolved: ResolvedPolicy,
                  egress: sandbox.EgressNetwork) -> LaunchPlan:
        """Everything this start decides from the settings and the launcher's
        request, with no side effects: `launch_kernel` carries it out."""
        workdir = self._workdir(cwd)
        notebook = policy_source.notebook_path(launcher_env.get(policy_source.SESSION_ENV, ""), self._root_dir())
        uid, gid = self._ids(workdir)
        cmd = list(self.kernel_cmd)
        if self.cell_notices:
            cmd.append("--IPKernelApp.extra_extensions=awf_notice")
        return LaunchPlan(policy=resolved.policy, ceiling=resolved.ceiling, request=resolved.request,
                          pending=resolved.pending,
                          egress=egress, env=self._kernel_env(launcher_env), workdir=workdir, notebook=notebook,
                          uid=uid, gid=gid, mounts=self._protected_files(notebook, workdir) + self._extra_mounts(),
                          cmd=tuple(cmd))

    def resolve_policy(self, launcher_env: dict[str, str]) -> ResolvedPolicy:
        """The effective policy for a launch with this environment, and the
        admin bounds and notebook request it was made from."""
        request, notebook = policy_source.load_request_from(launcher_env, root_dir=self._root_dir(), log=self.log)
        pending = None
        consented = launcher_env.get(policy_source.CONSENT_ENV) == "1"
        if (request is not None and notebook and self.require_trust and not consented
                and not trust.is_trusted(notebook, self.parent)):
            request, pending = None, request
        resolved = self.resolve_request(request)
        return resolved._replace(pending=pending)

    def resolve_request(self, request: PolicyRequest | None) -> ResolvedPolicy:
        """The effective policy for this request within the admin bounds;
        PolicyError when it asks for more than the ceiling."""
        ceiling = None if self.domain_ceiling is None else parse_domains(
            self.domain_ceiling, "AWFProvisioner.domain_ceiling")
        policy = resolve_policy(
            admin_allow=parse_domains(self.allow_domains, "AWFProvisioner.allow_domains"),
            admin_block=parse_domains(self.block_domains, "AWFProvisioner.block_domains"),
            ceiling=ceiling, request=request, record_allowed=self.allow_record_mode)
        return ResolvedPolicy(policy, ceiling, request)

    def _root_dir(self) -> str | None:
        mkm = getattr(self.parent, "parent", None)
        return getattr(mkm, "root_dir", None) or None

    def _kernel_env(self, launcher_env: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in launcher_env.items()
               if any(fnmatch.fnmatchcase(k, pat) for pat in self.env_allowlist)}
        for key, value in (self.kernel_spec.env or {}).items():
            env[key] = string.Template(value).safe_substitute(launcher_env)
        env.pop("JPY_PARENT_PID", None)  # under --init the kernel would see pid 1 and exit
        return env

    def _workdir(self, cwd: str | None) -> str | None:
        if not self.mount_workdir:
            return None
        path = os.path.realpath(cwd or os.getcwd())
        if path in _FORBIDDEN_WORKDIRS or not os.path.isdir(path):
            self.log.warning("awf-kernel: not mounting %s into the kernel (system folder or missing)", path)
            return None
        return path

    def _ids(self, workdir: str | None) -> tuple[int, int]:
        """The kernel's uid/gid: the setting, else the server's user, else (the
        server runs as root) the owner of the notebook's folder, else 1000."""
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            st = os.stat(workdir) if workdir else None
            uid, gid = (st.st_uid, st.st_gid) if st and st.st_uid != 0 else (1000, 1000)
        uid = self.kernel_uid if self.kernel_uid is not None else uid
        gid = self.kernel_gid if self.kernel_gid is not None else gid
        if uid in (0, ports.PROXY_UID):  # the settings are checked when set; a folder owned by uid 13 is not
            raise SandboxStartError(f"kernel_uid {uid} is not allowed (root or the proxy's uid)",
                                    hint="set AWFProvisioner.kernel_uid to an ordinary user id")
        return uid, gid

    @staticmethod
    def _protected_files(notebook: str | None, workdir: str | None) -> tuple[podspec.Mount, ...]:
        """The notebook file itself is mounted read-only over the writable folder:
        otherwise code in the kernel could edit its own `metadata.awf` and widen
        its policy at the next restart."""
        if not notebook or not workdir or os.path.commonpath([workdir, notebook]) != workdir:
            return ()
        return (podspec.Mount(notebook, notebook, read_only=True),)

    def _extra_mounts(self) -> tuple[podspec.Mount, ...]:
        """`extra_mounts` (checked when set), host paths with symlinks resolved."""
        return tuple(podspec.Mount(os.path.realpath(m.source), m.target, m.read_only)
                     for m in podspec.parse_mounts(self.extra_mounts))

    def _mounts(self, plan: LaunchPlan) -> tuple[podspec.Mount, ...]:
        """The plan's mounts plus the protection over every writable folder."""
        return plan.mounts + tuple(self._protection(plan, list(plan.mounts)))

    _placeholders: list = []           # protect.Placeholder made on the host for this pod
    _hub_kernel = False                # hub mode: the broker started a kernel for us
    _hub_request: dict = {}            # hub mode: the broker's `start` request, made in pre_launch
    _watched: dict = {}                # host path -> (device, inode) of every protected path
    _protect_dir: str | None = None    # holds the empty folder/file mounted over hidden paths
    _policy_env: dict = {}             # AWF_POLICY / JPY_SESSION_NAME of the launch: where the policy is re-read
    _claimed: ReadyPod | None = None   # the pool pod pre_launch took for this start
    _kept: sandbox.Pod | None = None   # a restart keeps the pod's proxy side: the pod without its kernel
    _pod_id: str | None = None         # the pool pod's id this kernel's containers run in, if any
    _routed = False                    # the kernel's runtime has its own network stack (render/link.py)
    _signalled = False                 # we sent the kernel SIGTERM/SIGKILL: its end is ours
    _exit_reported = False             # a kernel that ended by itself was reported in the log
    _kept_generation: str = ""         # the policy generation the kept proxy answers by
    _in_force: Policy | None = None    # the policy the pod's proxy answers by (start, restart, live change)
    _hub_policy: dict | None = None    # hub mode: the effective policy as the broker last reported it
    _generation: str = ""              # the policy files' generation the pod's proxy answers by

    def _protection(self, plan: LaunchPlan, mounts: list[podspec.Mount]) -> list[podspec.Mount]:
        """Mounts that keep the kernel from planting code that runs outside the
        sandbox later, or reading credentials, through the folders it can write
        (the notebook's folder is very often the user's home). See awf_kernel.protect."""
        self._remove_placeholders()
        workdir = plan.workdir
        every = ([podspec.Mount(workdir, workdir)] if workdir else []) + list(mounts)
        if not any(not m.read_only for m in every):
            return []
        uid = plan.uid
        spec_dir = getattr(self.kernel_spec, "resource_dir", None)
        self._protect_dir = tempfile.mkdtemp(prefix=f"awf-kernel-{self.kernel_id[:8]}-protect-")
        try:
            result = protect.protect(every, homes=protect.home_dirs(uid), scratch_dir=self._protect_dir,
                                     deny_write=[*self.deny_write, *([spec_dir + "/"] if spec_dir else [])],
                                     deny_read=list(self.deny_read))
        except protect.ProtectionError as exc:
            raise SandboxStartError(f"not starting the kernel: {exc}", hint=(
                "open the notebook from another folder (a project subfolder rather than your home), "
                "or replace the symlink with a copy, or change AWFProvisioner.extra_mounts")) from None
        self._placeholders = result.placeholders
        self._watched = _identities(protect.host_path(m.target, every) for m in result.mounts)
        for warning in result.warnings:
            self.log.warning("awf-kernel %s: %s", self.kernel_id, warning)
        if result.placeholders:
            self.log.info("awf-kernel %s: holding %d missing protected paths with placeholders (removed at "
                          "shutdown): %s", self.kernel_id, len(result.placeholders),
                          ", ".join(p.path for p in result.placeholders))
        return result.mounts

    def _remove_placeholders(self) -> None:
        """Remove the placeholders this kernel's start made, unless something
        on the host changed them meanwhile, and the per-kernel empty folder/file."""
        kept = protect.remove_placeholders(self._placeholders, self._protect_dir)
        if kept:
            self.log.warning("awf-kernel %s: left in place (changed on the host while the kernel ran): %s",
                             self.kernel_id, ", ".join(kept))
        self._placeholders = []
        self._watched = {}
        if self._protect_dir:
            shutil.rmtree(self._protect_dir, ignore_errors=True)
            self._protect_dir = None

    def _connection_copy(self, uid: int, gid: int) -> str:
        """A per-kernel folder with the container's own connection file:
        the kernel binds 0.0.0.0 inside its namespace, never the server's runtime dir."""
        d = tempfile.mkdtemp(prefix=f"awf-kernel-{self.kernel_id[:8]}-")
        info = dict(self.connection_info)
        info["ip"] = "0.0.0.0"
        info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
        path = os.path.join(d, "kernel.json")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(info, f)
        if os.getuid() == 0:
            os.chown(d, uid, gid)
            os.chown(path, uid, gid)
        os.chmod(d, 0o700)
        return d

    def _audit_dir_for_kernel(self, plan: LaunchPlan) -> str:
        """The kernel's audit folder, with the effective policy the trail is
        read against and the notebook's own request (what a suggestion to
        allow more extends)."""
        base = pathlib.Path(self.audit_dir)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        d = base / self.kernel_id
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o777)  # written by the proxy's uid 13; the parent (0700) keeps others out
        self._write_policy_meta(d, plan)
        return str(d)

    def _write_policy_meta(self, d: pathlib.Path, plan: LaunchPlan) -> None:
        """policy.json: what the trail is read against (the kernel's notices
        read it too, so it is replaced whole, never written in place)."""
        meta = {
            "kernel_id": self.kernel_id,
            "notebook": plan.notebook,
            "started": time.time(),
            "policy": {**plan.policy.to_json(), "allow_all": plan.policy.allow_all},
            "ceiling": None if plan.ceiling is None else [str(r) for r in plan.ceiling],
            "request": None if plan.request is None else plan.request.written(),
            "pending": None if plan.pending is None else plan.pending.written(),
        }
        tmp = d / ".policy.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / "policy.json")

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Called from `KernelManager._launch_kernel`: makes the pod and returns
        the connection info (127.0.0.1 and the published ports)."""
        if self.broker:
            return await self._launch_hub()
        try:
            if self.plan is None:
                raise SandboxStartError("launch_kernel was called without pre_launch",
                                        hint="start kernels through jupyter_client's KernelManager")
            self._signalled = self._exit_reported = False  # a new kernel (a restart's too)
            self.pod = await self._docker(self._start_pod, self.plan, cmd)
            self._in_force = self.plan.policy
        except BaseException:
            # A failed start leaves nothing behind: not our folders, not the
            # manager's connection file, not the reserved ports. No step may
            # hide the error that stopped the start: each one's own failure is
            # logged and the next one still runs.
            for step in (self._remove_pod_now, self._remove_connection_dir, self._remove_placeholders,
                         self._discard_empty_audit_dir, self._km.cleanup_connection_file, self._return_ports):
                try:
                    step()
                except Exception:  # noqa: BLE001 - the start's own error is what the user must see
                    self.log.exception("awf-kernel %s: cleanup after a failed start: %s failed",
                                       self.kernel_id, getattr(step, "__name__", step))
            raise
        return self.connection_info

    def _start_pod(self, plan: LaunchPlan, cmd: list[str]) -> sandbox.Pod:
        """The pod for this start (in a worker thread): a kept proxy side
        (restart) or a claimed pool pod gets the policy put in force and
        confirmed first, then the kernel container; otherwise a cold pod."""
        claimed, kept = self._claimed, self._kept
        self._claimed = self._kept = None
        if kept is not None and not sandbox.proxy_still_set_up(kept):
            self.log.warning("awf-kernel %s: the pod's proxy did not survive the restart; making a new pod",
                             self.kernel_id)
            sandbox.remove_pod(self.kernel_id)
            kept, self._pod_id = None, None
        base = kept or (claimed.pod if claimed else None)
        if claimed is not None:
            self._pod_id = claimed.pod.kernel_id
            # The trail is the kernel's from now on; the pool's name stays as a
            # link, since the proxy's bind mount names it (a `docker restart`
            # of the proxy must meet the same folder, and its refusal marker).
            os.rename(claimed.audit_dir, pathlib.Path(self.audit_dir) / self.kernel_id)
            os.symlink(self.kernel_id, claimed.audit_dir)
        settings, egress, files, rules = self._pod_inputs(plan, cmd)
        if base is None:
            return sandbox.create_pod(settings, egress, files, rules, self.startup_timeout)
        if claimed is not None:
            return self._start_beside_policy(settings, files, base, "pool claim",
                                             then=lambda: sandbox.rename_proxy(base, self.kernel_id))
        if self._generation == self._kept_generation:
            return sandbox.start_kernel(settings, replace(base, timings={"restart: policy": 0.0}),
                                        self.startup_timeout)
        if self._in_force is not None and widens(self._in_force, plan.policy):
            return self._start_beside_policy(settings, files, base, "restart: policy")
        t = time.perf_counter()
        try:
            sandbox.apply_policy(base.proxy_id, files, self._generation)
        except BaseException:
            sandbox.remove_pod(base.kernel_id)
            raise
        timings = {"restart: policy": time.perf_counter() - t}
        return sandbox.start_kernel(settings, replace(base, timings=timings), self.startup_timeout)

    def _start_beside_policy(self, settings: podspec.PodSettings, files: dict[str, bytes],
                             base: sandbox.Pod, step: str, then: Callable[[], None] | None = None) -> sandbox.Pod:
        """The kernel container starts while the proxy puts the new policy in
        force, when the policy it answers by until then is no wider than the new
        one: a claimed pool pod's deny-all, or a restart's previous policy that
        the new one only widens (`policy.widens`). At every moment the kernel is
        under one of the two, never anything wider. The start returns (and
        jupyter_client sends the first request) only once both are done; if
        either fails, the whole pod goes. A restart that narrows the policy
        applies it first instead."""
        t = time.perf_counter()
        applied: dict[str, Any] = {}

        def apply() -> None:
            try:
                sandbox.apply_policy(base.proxy_id, files, self._generation)
                if then is not None:
                    then()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
                applied["error"] = exc
            applied["seconds"] = time.perf_counter() - t

        worker = threading.Thread(target=apply, name=f"awf-policy-{self.kernel_id}", daemon=True)
        worker.start()
        try:
            pod = sandbox.start_kernel(settings, replace(base, timings={}), self.startup_timeout)
        except BaseException:
            worker.join()
            sandbox.remove_pod(base.kernel_id)
            raise
        worker.join()
        if "error" in applied:
            sandbox.remove_pod(base.kernel_id)
            raise applied["error"]
        # (the policy step overlaps the kernel's create and start: not part of their sum)
        return replace(pod, timings={step: applied["seconds"], **pod.timings})

    def _remove_pod_now(self) -> None:
        """After a failed start: the pod, whatever it came from."""
        sandbox.remove_pod(self.kernel_id)
        self.pod = None

    def _pod_inputs(self, plan: LaunchPlan, cmd: list[str]):
        """Settings, rendered files and firewall rule inputs for `create_pod`."""
        self._kept_generation = self._generation
        uid, gid = plan.uid, plan.gid
        mounts = self._mounts(plan)
        self.connection_dir = self._connection_copy(uid, gid)
        egress = plan.egress
        settings = podspec.PodSettings(
            kernel_id=self.kernel_id,
            proxy_image=self.proxy_image,
            kernel_image=self.image,
            kernel_cmd=tuple(cmd),
            kernel_ports=self._kernel_ports(),
            network=egress.name if not egress.internal else podspec.ingress_network_name(self.kernel_id),
            uid=uid, gid=gid,
            connection_dir=self.connection_dir,
            audit_dir=self._audit_dir_for_kernel(plan),
            env=dict(plan.env),
            workdir=plan.workdir,
            mounts=mounts,
            mem_limit=self.mem_limit or None,
            cpu_limit=self.cpu_limit or None,
            pids_limit=self.pids_limit or None,
            server=f"{socket.gethostname()}:{os.getpid()}",
            addons_dir=str(ADDONS_DIR) if self.cell_notices else None,
            dns_servers=tuple(self.dns_servers),
            read_only_image=self.read_only_image,
            tmp_size=self.tmp_size or None,
            pod=self._pod_id,
            runtime=self.runtime,
            routed=self._routed,
        )
        private = list(self.allow_private_destinations)
        files, self._generation = self._proxy_files(plan)
        rules = {"kernel_ports": settings.kernel_ports, "dns_upstreams": list(self.dns_servers),
                 "allowed_private": private}
        return settings, egress, files, rules

    def _proxy_files(self, plan: LaunchPlan) -> tuple[dict[str, bytes], str]:
        return render_proxy_files(plan.policy, kernel_id=self.kernel_id, notebook=plan.notebook,
                                  upstreams=self.dns_servers, allowed_private=self.allow_private_destinations)

    # --- live policy -----------------------------------------------------------------
    async def update_policy(self, request: PolicyRequest | None, *, source: str) -> Policy:
        """Put a new request in force in the running pod, within the admin
        bounds, without restarting the kernel (its state survives). Raises
        PolicyError when the request asks for more than the ceiling (nothing
        changes). A proxy that does not confirm the new policy is stopped
        with its kernel: a pod never runs on a half-applied policy.
        Only the server side calls this; the kernel cannot reach the server.
        In hub mode the broker decides, within its bounds for this user."""
        if self.broker:
            return await self._apply_hub(request, source)
        return await self._apply(self.resolve_request(request), source)

    async def reload_policy(self, *, source: str = "notebook saved") -> Policy:
        """Re-read the policy where the launch read it (the notebook file, with
        its trust, or AWF_POLICY) and put it in force: what saving a notebook
        whose `metadata.awf` changed does to its running kernel."""
        if self.broker:
            request = hub_mode.consented_request(dict(self._policy_env), root_dir=self._root_dir(), log=self.log,
                                                 require_trust=self.require_trust, trust_parent=self.parent,
                                                 kernel_id=self.kernel_id)
            return await self._apply_hub(request, source)
        return await self._apply(self.resolve_policy(dict(self._policy_env)), source)

    async def _apply_hub(self, request: PolicyRequest | None, source: str) -> Policy:
        if not self._hub_kernel:
            raise SandboxStartError("the kernel has no running pod", hint="start the kernel first")
        fields = {"policy": hub_mode.policy_fields(request)} if request is not None else {}
        try:
            reply = await self._broker().acall("policy", kernel_id=self.kernel_id, **fields)
        except BrokerError as exc:
            if exc.code == "refused":
                raise PolicyError(exc.message, hint=exc.hint) from None
            raise
        self._hub_policy = reply.get("policy") if isinstance(reply.get("policy"), dict) else None
        self.log.info("awf-kernel %s: the broker put a new policy in force (%s): %s", self.kernel_id, source,
                      json.dumps(self._hub_policy))
        got = self._hub_policy or {}
        return Policy(allow=parse_domains(got.get("allow_domains") or [], "broker"),
                      block=parse_domains(got.get("block_domains") or [], "broker"),
                      mode=got.get("mode") or "enforce")

    async def _apply(self, resolved: ResolvedPolicy, source: str) -> Policy:
        if self.broker:
            raise SandboxStartError("a brokered kernel's policy changes at its next restart",
                                    hint="restart the kernel to apply the notebook's new metadata")
        if self.pod is None or self.plan is None:
            raise SandboxStartError("the kernel has no running pod", hint="start the kernel first")
        previous = self.plan
        plan = replace(previous, policy=resolved.policy, ceiling=resolved.ceiling, request=resolved.request,
                       pending=resolved.pending)
        files, generation = self._proxy_files(plan)
        if generation != self._generation:
            try:
                seconds = await self._docker(sandbox.apply_policy, self.pod.proxy_id, files, generation)
            except Exception:
                self.log.error("awf-kernel %s: the new policy was not confirmed; stopping the kernel",
                               self.kernel_id)
                # The proxy may answer by either policy now: a restart that keeps
                # it must put its policy in force before the kernel starts.
                self._generation, self._in_force = "", None
                await self._docker(sandbox.signal_container, self.pod.kernel_id_container, signal.SIGKILL)
                raise
            self.log.info("awf-kernel %s: policy %s in force after %.2f s (%s): %s", self.kernel_id, generation,
                          seconds, source, json.dumps(plan.policy.to_json()))
        changed = generation != self._generation or plan.pending != previous.pending
        self.plan, self._generation, self._in_force = plan, generation, plan.policy
        d = self._audit_dir_for_change().parent
        if changed and d.is_dir():
            self._write_policy_meta(d, plan)
            record = {"kind": "policy", "time": time.time(), "kernel_id": self.kernel_id, "source": source,
                      "generation": generation, "policy": plan.policy.to_json(),
                      "previous": previous.policy.to_json(),
                      "pending": None if plan.pending is None else plan.pending.written()}
            with open(self._audit_dir_for_change(), "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        return plan.policy

    def _audit_dir_for_change(self) -> pathlib.Path:
        """The audit trail's record of policy changes (next to policy.json)."""
        return pathlib.Path(self.audit_dir) / self.kernel_id / "policy-changes.jsonl"

    def policy_view(self) -> dict:
        """The policy as a user should see it (the JupyterLab panel): the
        effective rules, what the admin and the notebook contributed, and a
        request waiting for the user's trust."""
        plan = self.plan
        def rules(values):
            return [str(r) for r in values]
        return {
            "kernel_id": self.kernel_id,
            "hub_mode": bool(self.broker),
            "notebook": plan.notebook if plan else None,
            "generation": self._generation,
            "require_trust": self.require_trust,
            "effective": (self._hub_policy if self.broker else
                          None if plan is None else {**plan.policy.to_json(), "allow_all": plan.policy.allow_all}),
            # hub mode: this side's admin settings are ignored (the broker's config decides)
            "admin": None if self.broker else {"allow_domains": list(self.allow_domains),
                                               "block_domains": list(self.block_domains),
                                               "allow_record_mode": self.allow_record_mode},
            "ceiling": None if self.broker or self.domain_ceiling is None else rules(
                parse_domains(self.domain_ceiling, "AWFProvisioner.domain_ceiling")),
            "request": None if plan is None or plan.request is None else plan.request.written(),
            "pending": None if plan is None or plan.pending is None else plan.pending.written(),
        }

    # --- running -----------------------------------------------------------------
    async def poll(self) -> int | None:
        """Called from `KernelManager.is_alive`: None while the kernel runs."""
        if self.broker:
            return await self._poll_hub()
        if self.pod is None:
            return 0
        if self._protection_broken():
            await self._docker(sandbox.signal_container, self.pod.kernel_id_container, signal.SIGKILL)
            return -1
        running, code = await self._docker(sandbox.pod_state, self.pod)
        if not running and code and not self._signalled and not self._exit_reported:
            # A kernel that ended by itself (not by our signal, not by its own
            # shutdown): say why while its container is still there to ask.
            self._exit_reported = True
            self.log.warning("awf-kernel %s: the kernel container ended by itself: %s", self.kernel_id,
                             await self._docker(sandbox.exit_report, self.pod.kernel_id_container))
        return None if running else (code if code is not None else -1)

    def _protection_broken(self) -> bool:
        """A protected path replaced on the host (an editor saving by rename,
        `mv x ~/.bashrc`) takes the kernel's read-only mount over it away with
        the old file: from then on the kernel could write or read it. Such a
        kernel is stopped and reported dead; a restart protects the new file."""
        for path, ident in self._watched.items():
            if _identity(path) != ident:
                self.log.error("awf-kernel %s: %s was replaced on the host while the kernel ran; its "
                               "protection no longer holds, so the kernel is stopped (restart it)",
                               self.kernel_id, path)
                self._watched = {}
                return True
        return False

    async def _poll_hub(self) -> int | None:
        if not self._hub_kernel:
            return 0
        try:
            reply = await self._broker().acall("status", kernel_id=self.kernel_id)
        except BrokerError as exc:
            if exc.code == "no-such-kernel":
                return -1
            # The broker being away says nothing about the kernel: its pod runs on.
            self.log.warning("awf-kernel %s: cannot ask the broker about the kernel: %s", self.kernel_id, exc)
            return None
        if reply.get("running"):
            return None
        code = reply.get("exit_code")
        return code if isinstance(code, int) else -1

    async def wait(self) -> int | None:
        ret: int | None = 0
        while self.has_process and (ret := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return ret

    async def send_signal(self, signum: int) -> None:
        """Signals reach the kernel through the container's init (tini)."""
        if self.broker:
            if self._hub_kernel and signum in (signal.SIGINT, signal.SIGKILL, signal.SIGTERM):
                await self._broker().acall("signal", kernel_id=self.kernel_id, signal=int(signum))
            return
        if self.pod is not None:
            if signum in (signal.SIGKILL, signal.SIGTERM):
                self._signalled = True
            await self._docker(sandbox.signal_container, self.pod.kernel_id_container, signum)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Called from `KernelManager.cleanup_resources`: removes the whole pod
        (a restart makes a new one with the re-read policy on the same ports)."""
        if self.broker:
            if self._hub_kernel:
                try:
                    await self._broker().acall("stop", kernel_id=self.kernel_id)
                except BrokerError as exc:
                    if exc.code != "no-such-kernel":
                        raise
                self._hub_kernel = False
            if not restart:
                self._return_ports()
            return
        pod, self.pod = self.pod, None
        if restart and pod is not None and await self._docker(sandbox.proxy_still_set_up, pod):
            # Keep the proxy side (its rules, ports and audit trail are the
            # kernel's, not the kernel process's): only the kernel is replaced,
            # and the re-read policy is put in force before the new one starts.
            await self._docker(sandbox.remove_kernel_container, pod)
            self._kept = replace(pod, kernel_id_container="")
        elif restart:
            self._kept = None
            await self._docker(sandbox.remove_pod, self.kernel_id)
            self._pod_id = None  # the next pod is a new one
        else:
            # The kernel has ended (jupyter_client waited for it, or killed it);
            # make sure of it, then let the pod go in the background.
            self._kept = None
            if pod is not None:
                await self._docker(sandbox.signal_container, pod.kernel_id_container, signal.SIGKILL)
            ports = self._kernel_ports() if self.ports_cached else ()
            self.ports_cached = False
            sandbox.remove_pod_later(self.kernel_id, then=lambda: _return_ports(ports))
        self._remove_connection_dir()
        self._remove_placeholders()
        if not restart:
            self._return_ports()
            if self._pod_id:
                link = pathlib.Path(self.audit_dir) / self._pod_id
                if link.is_symlink():
                    link.unlink()

    def _return_ports(self) -> None:
        if self.ports_cached:
            _return_ports(self._kernel_ports())
            self.ports_cached = False

    def _discard_empty_audit_dir(self) -> None:
        """A pod that never ran a kernel leaves no audit folder (it only holds
        the policy and empty logs)."""
        d = pathlib.Path(self.audit_dir) / self.kernel_id
        if d.is_dir() and all(p.name == "policy.json" or p.stat().st_size == 0 for p in d.iterdir()):
            shutil.rmtree(d, ignore_errors=True)

    def _remove_connection_dir(self) -> None:
        if self.connection_dir:
            shutil.rmtree(self.connection_dir, ignore_errors=True)
            self.connection_dir = None

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """A pod takes longer than a process; one setting says how long."""
        return max(recommended, self.startup_timeout)

    async def get_provisioner_info(self) -> dict:
        info = await super().get_provisioner_info()
        if self._hub_kernel:
            info["awf_broker"] = self.broker
        if self.pod is not None:
            info["awf_pod"] = {"proxy": self.pod.proxy_id, "kernel": self.pod.kernel_id_container,
                               "ingress": self.pod.ingress_network, "started": self.pod.started,
                               "holder": self.pod.holder_id}
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._hub_kernel = bool(provisioner_info.get("awf_broker"))
        pod = provisioner_info.get("awf_pod")
        if pod:
            self.pod = sandbox.Pod(self.kernel_id, pod["proxy"], pod["kernel"], pod.get("ingress"),
                                   pod.get("started"), holder_id=pod.get("holder"))


def _discard_pool_pod(ready: ReadyPod) -> None:
    """A pool pod that leaves the pool unclaimed: its ports and audit folder go too."""
    _return_ports(ready.ports)
    shutil.rmtree(ready.audit_dir, ignore_errors=True)


def _return_ports(ports) -> None:
    lpc = LocalPortCache.instance()
    for port in ports:
        lpc.return_port(port)
