"""A validated start request, its user and their settings -> a running pod.

`start` reads as the script of a brokered kernel's start: policy, the user's
folders checked and protected (with the user's rights, awf_kernel.broker.
userside), the connection file and audit folder, the rendered proxy
configuration, `sandbox.docker.create_pod`, then a check that every mount
the kernel got is the folder or file that was checked. If any step fails,
everything made so far is removed.

The small pure builders here mirror pieces of AWFProvisioner (provisioner.py
`_pod_inputs`, `_connection_copy`, `_audit_dir_for_kernel`, `_kernel_env`,
`_protection`); they are written again for the broker until both share one
launch plan.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field

from .. import naming, runtime
from ..errors import AWFError, ImageMissing, NetworkMissing
from ..policy import Policy, PolicyRequest, parse_domains, resolve_policy
from ..render import pod as podspec
from ..render import ports as pod_ports
from ..render.proxy_files import render_proxy_files
from ..sandbox import docker as sandbox
from . import userside
from .config import BrokerConfig
from .identity import User
from .protocol import PORT_NAMES, StartRequest

ADDONS_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernel_side"
# The server label of a brokered pod names the broker by its runtime folder,
# so each broker finds its own pods again (several brokers may share an
# engine: test runs, staging). Not "host:pid": `awf-kernel gc` would take a
# restarted broker's kernels for a dead Jupyter server's.
SERVER_LABEL = "awf-broker"


def server_label(cfg: BrokerConfig) -> str:
    return f"{SERVER_LABEL}:{cfg.runtime()}"


class StartRefused(AWFError):
    """The request is well formed but cannot be granted (image, folders, policy)."""


# --- where a kernel's files live ------------------------------------------------------------

@dataclass(frozen=True)
class KernelPaths:
    state_dir: str       # root-owned 0700: connection file and the pod's record
    scratch_dir: str     # the user's own: protection placeholders' list, empty folder/file
    audit_dir: str       # the proxy writes, the owner reads

    @property
    def connection_file(self) -> str:
        return os.path.join(self.state_dir, "kernel.json")

    @property
    def record_file(self) -> str:
        return os.path.join(self.state_dir, "record.json")


def user_scratch_base(cfg: BrokerConfig, uid: int) -> str:
    return os.path.join(cfg.runtime(), "users", str(uid))


def paths_for(cfg: BrokerConfig, kernel_id: str, uid: int) -> KernelPaths:
    kernel_id = naming.valid_kernel_id(kernel_id)
    return KernelPaths(state_dir=os.path.join(cfg.runtime(), "kernels", kernel_id),
                       scratch_dir=os.path.join(user_scratch_base(cfg, uid), f"awf-kernel-{kernel_id}-protect"),
                       audit_dir=os.path.join(cfg.audit_dir, kernel_id))


# --- the record of a brokered kernel ------------------------------------------------------------

@dataclass
class KernelRecord:
    """What the broker knows about one kernel; saved next to its connection
    file (root-only). The owner is the pod's label; this adds what labels
    cannot hold (when each container started, the protected paths to watch)."""
    kernel_id: str
    owner_uid: int
    owner_gid: int = 0
    owner_gids: tuple[int, ...] = ()
    proxy_id: str | None = None
    kernel_container_id: str | None = None
    ingress_network: str | None = None
    started: dict[str, str] | None = None
    holder_id: str | None = None     # routed pods: the kernel's own network namespace
    watched: dict[str, list[int] | None] = field(default_factory=dict)
    image: str | None = None
    notebook: str | None = None
    workdir: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    created: float = 0.0
    # The Jupyter server that asked for it (SO_PEERCRED's pid and the
    # process's start time, so a reused pid is not mistaken for it): when that
    # server is gone without stopping its kernel (a hub shutting down sends
    # SIGINT, and jupyter_server then exits without shutting kernels down),
    # the broker removes the pod.
    client_pid: int = 0
    client_start: int = 0
    state: str = "starting"          # starting | running (the broker's table only)

    def pod(self) -> sandbox.Pod | None:
        if not (self.proxy_id and self.kernel_container_id):
            return None
        return sandbox.Pod(self.kernel_id, self.proxy_id, self.kernel_container_id, self.ingress_network,
                           self.started, holder_id=self.holder_id)

    def public(self) -> dict:
        """What `list` shows its owner."""
        return {"kernel_id": self.kernel_id, "state": self.state, "image": self.image, "notebook": self.notebook,
                "cwd": self.workdir, "ports": self.ports, "created": self.created}


def save_record(paths: KernelPaths, record: KernelRecord) -> None:
    data = asdict(record)
    data.pop("state", None)
    tmp = paths.record_file + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as f:
        json.dump(data, f)
    os.replace(tmp, paths.record_file)


def load_record(paths: KernelPaths) -> dict:
    try:
        with open(os.open(paths.record_file, os.O_RDONLY | os.O_NOFOLLOW)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- pure builders ----------------------------------------------------------------------------------

def effective_policy(cfg: BrokerConfig, req: StartRequest) -> tuple[Policy, tuple | None]:
    """The broker's admin bounds and the notebook's request -> the policy
    (a request outside the ceiling is a PolicyError naming the domain)."""
    return policy_for(cfg, req.policy)


def policy_for(cfg: BrokerConfig, request: PolicyRequest | None) -> tuple[Policy, tuple | None]:
    ceiling = None if cfg.domain_ceiling is None else parse_domains(cfg.domain_ceiling, "BrokerConfig.domain_ceiling")
    policy = resolve_policy(admin_allow=parse_domains(cfg.allow_domains, "BrokerConfig.allow_domains"),
                            admin_block=parse_domains(cfg.block_domains, "BrokerConfig.block_domains"),
                            ceiling=ceiling, request=request, record_allowed=cfg.allow_record_mode)
    return policy, ceiling


def change_policy(cfg: BrokerConfig, rec: KernelRecord, request: PolicyRequest | None) -> Policy:
    """Live policy for a brokered kernel: the owner's new request within the
    broker's bounds for that user, put in force in the running pod (and
    confirmed), policy.json replaced and the change recorded. A proxy that
    does not confirm is stopped with its kernel (PolicyError: nothing changed)."""
    policy, ceiling = policy_for(cfg, request)
    files, generation = render_proxy_files(policy, kernel_id=rec.kernel_id, notebook=rec.notebook,
                                           upstreams=cfg.dns_servers, allowed_private=cfg.allow_private_destinations)
    if not rec.proxy_id:
        raise AWFError(f"kernel {rec.kernel_id} has no proxy on record")
    try:
        sandbox.apply_policy(rec.proxy_id, files, generation)
    except AWFError:
        if rec.kernel_container_id:
            sandbox.signal_container(rec.kernel_container_id, 9)
        raise
    paths = paths_for(cfg, rec.kernel_id, rec.owner_uid)
    write_policy_json(paths, audit_meta(rec.kernel_id, rec.owner_uid, rec.notebook, policy, ceiling, request))
    change = {"kind": "policy", "time": time.time(), "kernel_id": rec.kernel_id, "source": "broker",
              "generation": generation, "policy": policy.to_json()}
    fd = os.open(os.path.join(paths.audit_dir, "policy-changes.jsonl"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    with open(fd, "a") as f:
        f.write(json.dumps(change, sort_keys=True) + "\n")
    return policy


def choose_image(cfg: BrokerConfig, req: StartRequest) -> str:
    if req.image is None:
        return cfg.image
    if req.image not in cfg.images():
        raise StartRefused(f"image {req.image!r} is not one the broker allows you",
                           hint=f"choose one of: {', '.join(cfg.images())} (or leave the image out)")
    return req.image


def kernel_command(cfg: BrokerConfig, req: StartRequest) -> tuple[str, ...]:
    cmd = list(req.kernel_cmd or cfg.kernel_cmd)
    if cfg.cell_notices:
        cmd.append("--IPKernelApp.extra_extensions=awf_notice")
    return tuple(cmd)


def connection_info(req: StartRequest, kernel_id: str) -> dict:
    """The container's own connection file: the kernel binds 0.0.0.0 inside its namespace."""
    return {**req.ports, "ip": "0.0.0.0", "key": req.key, "transport": "tcp",
            "signature_scheme": req.signature_scheme, "kernel_name": "awf-python", "kernel_id": kernel_id}


def audit_meta(kernel_id: str, owner_uid: int, notebook: str | None, policy: Policy, ceiling,
               request: PolicyRequest | None) -> dict:
    """policy.json, as the provisioner writes it (the effective policy the
    trail is read against, the notebook's own request), plus whose kernel it was."""
    return {"kernel_id": kernel_id, "owner_uid": owner_uid, "notebook": notebook, "started": time.time(),
            "policy": {**policy.to_json(), "allow_all": policy.allow_all},
            "ceiling": None if ceiling is None else [str(r) for r in ceiling],
            "request": None if request is None else request.written()}


def pod_files(cfg: BrokerConfig, policy: Policy, kernel_id: str, notebook: str | None) -> dict[str, bytes]:
    return render_proxy_files(policy, kernel_id=kernel_id, notebook=notebook, upstreams=cfg.dns_servers,
                              allowed_private=cfg.allow_private_destinations)[0]


def firewall_inputs(cfg: BrokerConfig, req: StartRequest) -> dict:
    return {"kernel_ports": tuple(req.ports[p] for p in PORT_NAMES), "dns_upstreams": list(cfg.dns_servers),
            "allowed_private": list(cfg.allow_private_destinations)}


def pod_settings(cfg: BrokerConfig, req: StartRequest, user: User, *, image: str, network: str,
                 paths: KernelPaths, workdir: str, mounts: tuple[podspec.Mount, ...],
                 routed: bool = False) -> podspec.PodSettings:
    return podspec.PodSettings(
        kernel_id=req.kernel_id, proxy_image=cfg.proxy_image, kernel_image=image,
        kernel_cmd=kernel_command(cfg, req), kernel_ports=tuple(req.ports[p] for p in PORT_NAMES),
        network=network, uid=user.uid, gid=user.gid, connection_dir=paths.state_dir,
        audit_dir=paths.audit_dir, env=dict(req.env), workdir=workdir, mounts=mounts,
        mem_limit=cfg.mem_limit or None, cpu_limit=cfg.cpu_limit or None, pids_limit=cfg.pids_limit or None,
        server=server_label(cfg), addons_dir=str(ADDONS_DIR) if cfg.cell_notices else None,
        dns_servers=tuple(cfg.dns_servers), read_only_image=cfg.read_only_image, tmp_size=cfg.tmp_size or None,
        owner_uid=user.uid, runtime=cfg.kernel_runtime, routed=routed)


# --- side effects -----------------------------------------------------------------------------------

def prepare_dirs(cfg: BrokerConfig) -> None:
    """The broker's folders: runtime (0755, holds the socket), kernels/
    (0700), users/ (0711, each user's scratch folder below), audit (0711:
    an owner reaches their kernel's folder, nobody lists them)."""
    is_root = os.geteuid() == 0
    for path, mode in ((cfg.runtime(), 0o755), (os.path.join(cfg.runtime(), "kernels"), 0o700),
                       (os.path.join(cfg.runtime(), "users"), 0o711), (cfg.audit_dir, 0o711 if is_root else 0o700)):
        os.makedirs(path, mode=mode, exist_ok=True)
        st = os.lstat(path)
        if is_root and st.st_uid != 0:
            raise AWFError(f"{path} is not owned by root; the broker will not use it",
                           hint="remove it or choose another folder in the broker's config")
        os.chmod(path, mode)


def user_base(cfg: BrokerConfig, user: User) -> str:
    """The user's scratch base, theirs (0700): their kernels' placeholder lists live there."""
    base = user_scratch_base(cfg, user.uid)
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if not os.path.isdir(base) or os.path.islink(base):
        raise AWFError(f"{base} is not a folder")
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (user.uid, user.gid):
        os.lchown(base, user.uid, user.gid)
    return base


def write_connection_file(paths: KernelPaths, info: dict, user: User) -> None:
    """Root-owned folder (0700); the file is the kernel uid's (0600), the only
    one mounted into the kernel."""
    os.makedirs(paths.state_dir, mode=0o700, exist_ok=True)
    os.chmod(paths.state_dir, 0o700)
    fd = os.open(paths.connection_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w") as f:
        json.dump(info, f)
    if os.geteuid() == 0:
        os.chown(paths.connection_file, user.uid, user.gid)
    else:
        os.chmod(paths.connection_file, 0o666)  # a docker-group broker: the folder (0700) keeps others out


def make_audit_dir(paths: KernelPaths, user: User, meta: dict) -> None:
    """Written by the proxy (uid 13), read by the owner's kernel (cell
    notices) and the owner; nobody else. policy.json is the broker's."""
    os.makedirs(paths.audit_dir, exist_ok=True)
    if os.geteuid() == 0:
        os.lchown(paths.audit_dir, pod_ports.PROXY_UID, user.gid)
        os.chmod(paths.audit_dir, 0o750)
    else:
        os.chmod(paths.audit_dir, 0o777)
    write_policy_json(paths, meta)


def write_policy_json(paths: KernelPaths, meta: dict) -> None:
    """policy.json, replaced whole (the kernel's notices read it)."""
    tmp = os.path.join(paths.audit_dir, f".policy.json.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(paths.audit_dir, "policy.json"))  # replaces whatever the proxy's uid put there


def audit_owner(paths: KernelPaths) -> int | None:
    """Whose audit folder is there for this kernel id: None (none yet), the
    owner's uid from policy.json (the broker's own file), or -1 (unknown)."""
    if not os.path.lexists(paths.audit_dir):
        return None
    try:
        fd = os.open(os.path.join(paths.audit_dir, "policy.json"), os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd) as f:
            meta = json.load(f)
            mine = os.fstat(f.fileno()).st_uid == os.geteuid()
    except (OSError, ValueError):
        return -1
    owner = meta.get("owner_uid") if isinstance(meta, dict) and mine else None
    return owner if isinstance(owner, int) and not isinstance(owner, bool) else -1


def discard_empty_audit_dir(paths: KernelPaths) -> None:
    d = pathlib.Path(paths.audit_dir)
    if d.is_dir() and all(p.name == "policy.json" or p.stat().st_size == 0 for p in d.iterdir()):
        shutil.rmtree(d, ignore_errors=True)


class MountMismatch(AWFError):
    hint = "do not move or replace your folders while a kernel starts; then start it again"


def verify_mounts(pod: sandbox.Pod, expected: dict[str, list[int]]) -> None:
    """Every mount the kernel got is the very folder or file checked with the
    user's rights: Docker (root) resolves the paths again when it creates the
    container, and a folder swapped for a symlink in between would hand the
    kernel some other place. Seen from inside the container's own root."""
    pid = sandbox.container_pid(pod.kernel_id_container)
    if pid is None:
        return  # the kernel already exited: nothing runs with these mounts
    root = f"/proc/{pid}/root"
    for target, (dev, ino) in sorted(expected.items()):
        try:
            st = os.lstat(root + target)
        except OSError as exc:
            raise MountMismatch(f"cannot check the kernel's mount at {target} ({exc.strerror})") from None
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise MountMismatch(f"{target} changed while the kernel started; the kernel was stopped")


def start(req: StartRequest, user: User, cfg: BrokerConfig,
          holder: tuple[str, int]) -> tuple[KernelRecord, dict]:
    """Make and start the kernel's pod; on any failure leave nothing behind.
    Returns its record and, for the user, the effective policy and the
    protection's warnings."""
    kid = req.kernel_id
    policy, ceiling = effective_policy(cfg, req)
    image = choose_image(cfg, req)
    try:
        sandbox.require_image(image, "image")
        sandbox.require_image(cfg.proxy_image, "proxy_image")
        egress = sandbox.egress_network(cfg.egress_network)
    except (ImageMissing, NetworkMissing) as exc:
        raise AWFError(exc.message, hint="the broker's operator can fix this: `awf-kernel build`, or "
                                         "BrokerConfig.image / proxy_image / egress_network") from None
    routed = runtime.routed(runtime.check(cfg.kernel_runtime))  # missing or refused: before anything is made
    paths = paths_for(cfg, kid, user.uid)
    if os.path.lexists(paths.state_dir) or audit_owner(paths) not in (None, user.uid):
        # another kernel's files (another user's audit trail) are never taken over
        raise StartRefused(f"kernel id {kid} is in use", hint="start with a new kernel id")
    user_base(cfg, user)
    try:
        write_connection_file(paths, connection_info(req, kid), user)
        prepared = userside.run_as(user.uid, user.gid, user.gids, "prepare", {
            "uid": user.uid, "home": user.home, "roots": cfg.roots(user.home), "cwd": req.cwd,
            "notebook": req.notebook, "scratch_dir": paths.scratch_dir, "deny_write": list(cfg.deny_write),
            "deny_read": list(cfg.deny_read), "server_paths": {k: list(v) for k, v in req.server_paths.items()},
            "holder": list(holder)})
        mounts = tuple(podspec.Mount(s, t, bool(ro)) for s, t, ro in prepared["mounts"])
        make_audit_dir(paths, user, audit_meta(kid, user.uid, prepared["notebook"], policy, ceiling,
                                                    req.policy))
        network = egress.name if not egress.internal else podspec.ingress_network_name(kid)
        settings = pod_settings(cfg, req, user, image=image, network=network, paths=paths,
                                workdir=prepared["workdir"], mounts=mounts, routed=routed)
        record = KernelRecord(kernel_id=kid, owner_uid=user.uid, owner_gid=user.gid, owner_gids=user.gids,
                              watched=prepared["watched"], image=image, notebook=prepared["notebook"],
                              workdir=prepared["workdir"], ports=dict(req.ports), created=time.time())
        save_record(paths, record)
        pod = sandbox.create_pod(settings, egress, pod_files(cfg, policy, kid, prepared["notebook"]),
                                 firewall_inputs(cfg, req), cfg.startup_timeout)
        try:
            verify_mounts(pod, prepared["expected"])
        except BaseException:
            sandbox.remove_pod(kid)
            raise
        record.proxy_id, record.kernel_container_id = pod.proxy_id, pod.kernel_id_container
        record.ingress_network, record.started, record.state = pod.ingress_network, pod.started, "running"
        record.holder_id = pod.holder_id
        save_record(paths, record)
        return record, {"policy": policy.to_json(), "warnings": list(prepared["warnings"])}
    except BaseException:
        try:
            userside.run_as(user.uid, user.gid, user.gids, "release", {"scratch_dir": paths.scratch_dir})
        except Exception:  # noqa: BLE001 - the start's own error is the one to report
            pass
        shutil.rmtree(paths.state_dir, ignore_errors=True)
        discard_empty_audit_dir(paths)
        raise


def holder() -> tuple[str, int]:
    """The process whose life keeps placeholders in use: this broker."""
    return socket.gethostname(), os.getpid()


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat field
    22), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def client_gone(record: KernelRecord) -> bool:
    """The server that started this kernel has exited (never for a record
    without a client, e.g. one a previous broker version made)."""
    if record.client_pid <= 0:
        return False
    return process_start(record.client_pid) != record.client_start
