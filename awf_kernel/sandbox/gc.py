"""Finding and removing leftovers by label, never by name."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import tempfile

from .. import naming, protect
from .docker import client, remove_pod


def _server_alive(server: str) -> bool:
    """Is the Jupyter process that made a pod still running on this host?"""
    host, _, pid = server.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # made elsewhere: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pod_containers() -> list[dict]:
    """Every pod container as the engine lists it (Labels, State), in one call:
    no per-container inspect, which fails when a kernel stops meanwhile."""
    return client().api.containers(all=True, filters=naming.kernel_filter())


def leftover_kernels(everything: bool = False) -> dict[str, str]:
    """kernel id -> why it counts as dead. A pod is dead when its kernel
    container is not running, or the server that started it is gone. A warm
    pool's pod belongs to the kernel that claimed it (the kernel container's
    POD label); an unclaimed one has no kernel yet and is dead only when its
    server is gone."""
    pods: dict[str, dict] = {}
    containers = _pod_containers()
    claimed_by = {(c.get("Labels") or {}).get(naming.POD): (c.get("Labels") or {}).get(naming.KERNEL_ID, "")
                  for c in containers if (c.get("Labels") or {}).get(naming.POD)}
    pool: dict[str, str] = {}  # unclaimed pool pod id -> its server label
    for container in containers:
        labels = container.get("Labels") or {}
        kid = labels.get(naming.KERNEL_ID, "")
        kid = claimed_by.get(kid, kid)
        pods.setdefault(kid, {})[labels.get(naming.ROLE)] = container
        if labels.get(naming.POOL) and kid.startswith(naming.POOL_ID_PREFIX):
            pool[kid] = labels.get(naming.SERVER, "")
    for net in client().networks.list(filters=naming.kernel_filter()):
        kid = (net.attrs.get("Labels") or {}).get(naming.KERNEL_ID, "")
        pods.setdefault(claimed_by.get(kid, kid), {})
    dead = {}
    for kid, members in pods.items():
        kernel = members.get("kernel")
        if everything:
            dead[kid] = "--all"
        elif kid in pool:
            if not _server_alive(pool[kid]):
                dead[kid] = "an unclaimed pool pod whose Jupyter server is gone"
        elif kernel is None:
            dead[kid] = "no kernel container"
        elif kernel.get("State") != "running":
            dead[kid] = f"kernel container {kernel.get('State')}"
        elif not _server_alive((kernel.get("Labels") or {}).get(naming.SERVER, "")):
            dead[kid] = "its Jupyter server is gone"
    return dead


def stale_connection_dirs() -> list[pathlib.Path]:
    """Per-kernel connection folders whose kernel no longer exists."""
    live = {(k.get("Labels") or {}).get(naming.KERNEL_ID, "")[:8] for k in _pod_containers()}
    out = []
    for d in pathlib.Path(tempfile.gettempdir()).glob("awf-kernel-*"):
        short = d.name[len("awf-kernel-"):].split("-", 1)[0]
        if d.is_dir() and short not in live:
            out.append(d)
    return out


def collect(everything: bool = False, dry_run: bool = False) -> list[str]:
    """Remove dead pods and stale connection folders; return what was removed."""
    removed = []
    for kid, why in sorted(leftover_kernels(everything).items()):
        removed.append(f"pod of kernel {kid} ({why})")
        if not dry_run:
            remove_pod(kid)
    for d in stale_connection_dirs():
        removed.append(f"folder {d}")
        if not dry_run:
            # placeholders a crashed server left in the user's folders
            removed.extend(f"placeholder {p}" for p in protect.release_scratch(str(d)))
            shutil.rmtree(d, ignore_errors=True)
    return removed
