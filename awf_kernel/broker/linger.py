"""After the broker stops: removing the pods of servers that exit next.

JupyterHub stops its managed services BEFORE its users' servers
(`JupyterHub.cleanup`: services, then servers). A broker run as the hub's
service is gone by the time the servers shut their kernels down: their stop
requests cannot reach it, and without this the pods would run on until a
broker starts again (whose start removes them). So a broker that stops while
kernels of live Jupyter servers run hands them to a watcher: a process of
its own (own session: the hub signals only the service's process) that
removes each such kernel's pod once the server that started it has exited,
and ends when none is left, when a broker answers on the socket again (that
one takes the kernels over), or after WATCH_LIMIT seconds.

Under systemd the unit's stop ends the watcher too (KillMode=control-group);
there the broker outlives the hub anyway, and a restarted broker removes at
its start the pods of servers that exited while it was away.

    python -m awf_kernel.broker.linger   (JSON on stdin: config values, kernel records)
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict

from . import launch, pods
from .client import BrokerClient, BrokerError
from .config import BrokerConfig
from .launch import KernelRecord

log = logging.getLogger("awf_kernel.broker")
WATCH_LIMIT = 600.0  # seconds; servers still running then are not waited for
INTERVAL = 0.5


def to_watch(records: Iterable[KernelRecord]) -> list[KernelRecord]:
    """Running kernels whose Jupyter server is still there."""
    return [r for r in records if r.state == "running" and r.client_pid > 0 and not launch.client_gone(r)]


def hand_over(cfg: BrokerConfig, records: Iterable[KernelRecord]) -> subprocess.Popen | None:
    """Start the watcher for these kernels (if any needs one); does not wait for it."""
    watched = to_watch(records)
    if not watched:
        return None
    payload = {"config": {n: getattr(cfg, n) for n in cfg.trait_names(config=True)},
               "kernels": [asdict(r) for r in watched]}
    # the same awf_kernel as this broker's, wherever it was imported from
    here = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "awf_kernel.broker.linger"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True, cwd="/", env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(payload).encode())
    proc.stdin.close()
    log.info("%d kernels of running Jupyter servers: watcher pid %d removes their pods when their servers exit "
             "(or hands them to the next broker)", len(watched), proc.pid)
    return proc


def broker_answers(cfg: BrokerConfig) -> bool:
    try:
        BrokerClient("unix://" + cfg.socket_path, timeout=5).call("ping")
    except BrokerError:
        return False
    return True


def watch(cfg: BrokerConfig, records: list[KernelRecord], limit: float = WATCH_LIMIT,
          interval: float = INTERVAL) -> list[str]:
    """Remove each kernel's pod once its server is gone; returns their ids."""
    left, removed = list(records), []
    deadline = time.monotonic() + limit
    while left:
        if broker_answers(cfg):
            log.info("watcher: a broker answers on %s again; it takes over %d kernels", cfg.socket_path, len(left))
            break
        for rec in [r for r in left if launch.client_gone(r)]:
            log.info("uid=%d: kernel %s: its Jupyter server (pid %d) is gone; removing its pod",
                     rec.owner_uid, rec.kernel_id, rec.client_pid)
            try:
                pods.stop(cfg, rec.kernel_id, rec.owner_uid, rec.owner_gid, rec.owner_gids)
            except Exception:  # noqa: BLE001 - tried again at the next round
                log.exception("watcher: removing the pod of kernel %s failed", rec.kernel_id)
                continue
            left.remove(rec)
            removed.append(rec.kernel_id)
        if left and time.monotonic() > deadline:
            log.warning("watcher: %d kernels' servers still run after %.0f s; leaving them to the next broker",
                        len(left), limit)
            break
        if left:
            time.sleep(interval)
    return removed


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[awf-broker] %(asctime)s %(levelname)s %(message)s")
    data = json.load(sys.stdin)
    cfg = BrokerConfig(**data["config"])
    records = [KernelRecord(**{**k, "owner_gids": tuple(k.get("owner_gids") or ())}) for k in data["kernels"]]
    log.info("watcher (pid %d): %d kernels", os.getpid(), len(records))
    watch(cfg, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
