"""The broker's running kernels: rebuilt from labels, polled, signalled, removed.

The pods' owner labels are the truth about who owns what, so a restarted
broker finds every kernel again and their owners can still act on them. Each
kernel's record file (root-only, next to its connection file) adds what a
label cannot hold. Every function here blocks; the server runs them in a
worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

from .. import audit, naming
from ..sandbox import docker as sandbox
from . import launch, userside
from .config import BrokerConfig
from .launch import KernelRecord, load_record, paths_for

log = logging.getLogger("awf_kernel.broker")
NOBODY = -1  # owner of a pod whose owner label is missing or inconsistent: root only


def rebuild(cfg: BrokerConfig) -> dict[str, KernelRecord]:
    """The table of kernels, from the engine's labels (and their record files)."""
    table = {}
    for found in sandbox.labelled_pods(owned=True, server=launch.server_label(cfg)):
        try:
            naming.valid_kernel_id(found.kernel_id)
        except ValueError:
            continue  # not one the broker made
        owner = found.owner_uid if found.owner_uid is not None else NOBODY
        saved = load_record(paths_for(cfg, found.kernel_id, max(owner, 0)))
        if saved.get("owner_uid") != owner:
            saved = {}  # the label decides; a record that disagrees is ignored
        table[found.kernel_id] = KernelRecord(
            kernel_id=found.kernel_id, owner_uid=owner, owner_gid=int(saved.get("owner_gid") or 0),
            owner_gids=tuple(saved.get("owner_gids") or ()), proxy_id=found.proxy_id,
            kernel_container_id=found.kernel_container_id, ingress_network=found.ingress_network,
            started=saved.get("started"), watched=saved.get("watched") or {}, image=saved.get("image"),
            notebook=saved.get("notebook"), workdir=saved.get("workdir"), ports=saved.get("ports") or {},
            created=float(saved.get("created") or 0.0), client_pid=int(saved.get("client_pid") or 0),
            client_start=int(saved.get("client_start") or 0), state="running")
    return table


def id_taken(kernel_id: str) -> bool:
    """Some pod on the engine (the broker's or a single-user server's) has this kernel id."""
    return bool(sandbox.client().api.containers(all=True, filters=naming.kernel_filter(kernel_id)))


def rehold(cfg: BrokerConfig, table: dict[str, KernelRecord], holder: tuple[str, int]) -> None:
    """Placeholders of kernels a previous broker started stay in use while
    this broker runs (see protect.set_holder)."""
    by_owner: dict[int, list[KernelRecord]] = {}
    for rec in table.values():
        if rec.owner_uid > 0 and rec.owner_gid > 0:
            by_owner.setdefault(rec.owner_uid, []).append(rec)
    for uid, recs in by_owner.items():
        dirs = [paths_for(cfg, r.kernel_id, uid).scratch_dir for r in recs]
        try:
            userside.run_as(uid, recs[0].owner_gid, recs[0].owner_gids, "rehold",
                            {"scratch_dirs": dirs, "holder": list(holder)})
        except (userside.Refused, RuntimeError) as exc:
            log.warning("uid=%d: could not take over placeholders: %s", uid, exc)


def protection_broken(rec: KernelRecord) -> str | None:
    """A protected path replaced on the host took the kernel's read-only mount
    over it away with the old file (as in AWFProvisioner._protection_broken)."""
    for path, ident in rec.watched.items():
        try:
            st = os.lstat(path)
            now = [st.st_dev, st.st_ino]
        except OSError:
            now = None
        if now != ident:
            rec.watched = {}
            return path
    return None


def status(rec: KernelRecord) -> tuple[bool, int | None]:
    """(running, exit code), as AWFProvisioner.poll judges it: a replaced
    protected path or a pod container that ran again means the kernel is
    stopped and reported dead."""
    pod = rec.pod()
    if pod is None:
        return False, -1
    broken = protection_broken(rec)
    if broken:
        log.error("kernel %s: %s was replaced on the host while the kernel ran; its protection no longer "
                  "holds, so the kernel is stopped", rec.kernel_id, audit.safe_text(broken))
        sandbox.signal_container(pod.kernel_id_container, 9)
        return False, -1
    running, code = sandbox.pod_state(pod)
    return (True, None) if running else (False, code if code is not None else -1)


def send_signal(rec: KernelRecord, signum: int) -> None:
    if rec.kernel_container_id:
        sandbox.signal_container(rec.kernel_container_id, signum)


def stop(cfg: BrokerConfig, kernel_id: str, owner_uid: int, owner_gid: int, owner_gids: tuple[int, ...]) -> list[str]:
    """Remove the pod, the user's placeholders (if untouched) and the kernel's
    folders; the audit trail stays. Idempotent. Returns what it left in place."""
    sandbox.remove_pod(kernel_id)
    paths = paths_for(cfg, kernel_id, max(owner_uid, 0))
    kept: list[str] = []
    if owner_uid > 0 and owner_gid > 0 and os.path.isdir(paths.scratch_dir):
        try:
            userside.run_as(owner_uid, owner_gid, owner_gids, "release", {"scratch_dir": paths.scratch_dir})
        except (userside.Refused, RuntimeError) as exc:
            kept.append(paths.scratch_dir)
            log.warning("kernel %s: placeholders not released: %s", kernel_id, exc)
    shutil.rmtree(paths.state_dir, ignore_errors=True)
    return kept


def orphans(cfg: BrokerConfig, table: dict[str, KernelRecord]) -> dict[str, dict]:
    """Kernel folders without a kernel in the table (a broker that died in
    the middle of a start): kernel id -> their record (owner, ...)."""
    base = pathlib.Path(cfg.runtime()) / "kernels"
    out: dict[str, dict] = {}
    if not base.is_dir():
        return out
    for d in base.iterdir():
        if d.name in table or not d.is_dir() or d.is_symlink():
            continue
        try:
            naming.valid_kernel_id(d.name)
        except ValueError:
            continue
        rec = load_record(paths_for(cfg, d.name, 0))  # the record file's place does not depend on the uid
        out[d.name] = rec
    return out


def read_logs(cfg: BrokerConfig, kernel_id: str, caller_uid: int, caller_gid: int, caller_gids: tuple[int, ...],
              limit: int) -> dict | None:
    """The kernel's audit records, read with the caller's rights (root: its
    own), or None when the folder is not the caller's (or not there)."""
    folder = os.path.join(cfg.audit_dir, naming.valid_kernel_id(kernel_id))
    meta_path = os.path.join(folder, audit.POLICY_FILE)
    try:
        fd = os.open(meta_path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd) as f:
            st = os.fstat(f.fileno())
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    owner = meta.get("owner_uid") if isinstance(meta, dict) and st.st_uid == 0 else None
    if caller_uid != 0 and owner != caller_uid:
        return None
    if caller_uid == 0:
        recs = audit.read_kernel(pathlib.Path(folder))
        return {"records": recs[-limit:], "total": len(recs)}
    return userside.run_as(caller_uid, caller_gid, caller_gids, "logs", {"folder": folder, "limit": limit})
