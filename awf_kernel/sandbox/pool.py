"""A warm pool: pods whose proxy side is up before a kernel asks for one.

Most of a cold start is the proxy side of the pod (networks, proxy, the
firewall step); the kernel container itself starts in a tenth of a second.
So a Jupyter server keeps `pool_size` pods ready per set of pod settings:
proxy running, rules installed, a deny-all policy in force, no kernel. A
kernel start claims one: the notebook's policy is put in force and confirmed
(the same reload step as a live policy change) before the kernel container
is created, with its own uid, mounts and environment exactly as in a cold
start. A pod is never reused: it leaves the pool when claimed and is
removed with its kernel. Pool pods carry the server's label and POOL, so
`awf-kernel gc` collects them when their server is gone; the server removes
its own at exit.

The pool is process-wide (one per Jupyter server) and thread-safe: it is
filled by a background thread, taken from the provisioner's worker threads.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .docker import Pod, proxy_still_set_up, remove_pod

log = logging.getLogger("awf_kernel")


@dataclass(frozen=True)
class ReadyPod:
    pod: Pod                 # kernel_id: the pool pod's own id ("pool-..."); no kernel container yet
    ports: tuple[int, ...]   # the five kernel ports its proxy publishes, in PORT_NAMES order
    audit_dir: str           # its audit folder, renamed to the kernel's when claimed


class Pool:
    def __init__(self) -> None:
        self._ready: dict[Hashable, list[ReadyPod]] = {}
        self._fillers: dict[Hashable, threading.Thread] = {}
        self._discard: dict[Hashable, Callable[[ReadyPod], None]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()  # set when the pool closes: a delayed filler stops waiting
        atexit.register(self.close)

    def take(self, key: Hashable) -> ReadyPod | None:
        """A ready pod for these settings, or None (then the start is cold).
        A pod whose proxy stopped or ran again meanwhile is removed, not handed out."""
        while True:
            with self._lock:
                pods = self._ready.get(key) or []
                if not pods:
                    return None
                ready = pods.pop(0)
            if proxy_still_set_up(ready.pod):
                return ready
            log.warning("awf-kernel: pool pod %s is no longer set up; removing it", ready.pod.kernel_id)
            self._remove(key, ready)

    def fill(self, key: Hashable, size: int, make: Callable[[], ReadyPod],
             discard: Callable[[ReadyPod], None], delay: float = 0.0) -> None:
        """Top the pool up to `size` in the background (one filler per key),
        after `delay` seconds: a refill right after a claim would take the
        CPU from the claimed kernel while it boots."""
        if size <= 0:
            return
        with self._lock:
            if self._closed or (key in self._fillers and self._fillers[key].is_alive()):
                return
            self._discard[key] = discard
            thread = threading.Thread(target=self._fill, args=(key, size, make, delay), daemon=True,
                                      name="awf-kernel-pool")
            self._fillers[key] = thread
        thread.start()

    def ready_count(self, key: Hashable) -> int:
        with self._lock:
            return len(self._ready.get(key) or [])

    def wait_filled(self, key: Hashable, timeout: float = 60.0) -> int:
        """Wait for the filler of `key` to finish; the number of ready pods."""
        with self._lock:
            thread = self._fillers.get(key)
        if thread is not None:
            thread.join(timeout)
        return self.ready_count(key)

    def _fill(self, key: Hashable, size: int, make: Callable[[], ReadyPod], delay: float = 0.0) -> None:
        if delay > 0 and self._wake.wait(delay):
            return  # closed meanwhile
        while True:
            with self._lock:
                if self._closed or len(self._ready.get(key) or []) >= size:
                    return
            try:
                ready = make()
            except Exception as exc:  # noqa: BLE001 - a failed pool pod only means cold starts
                log.warning("awf-kernel: could not prepare a pool pod (kernels start cold): %s", exc)
                return
            with self._lock:
                if not self._closed:
                    self._ready.setdefault(key, []).append(ready)
                    continue
            self._remove(key, ready)
            return

    def _remove(self, key: Hashable, ready: ReadyPod) -> None:
        try:
            remove_pod(ready.pod.kernel_id)
        except Exception as exc:  # noqa: BLE001 - gc collects what is left (it carries the labels)
            log.warning("awf-kernel: could not remove pool pod %s: %s", ready.pod.kernel_id, exc)
        discard = self._discard.get(key)
        if discard is not None:
            discard(ready)

    def close(self, timeout: float = 30.0) -> None:
        """Remove every unclaimed pod (the server stops)."""
        with self._lock:
            self._closed = True
            fillers = list(self._fillers.values())
        self._wake.set()
        for thread in fillers:
            thread.join(timeout)
        with self._lock:
            leftovers = [(key, ready) for key, pods in self._ready.items() for ready in pods]
            self._ready = {}
        for key, ready in leftovers:
            self._remove(key, ready)

    def reopen(self) -> None:
        """After close (tests): accept fills again."""
        with self._lock:
            self._closed = False
            self._wake = threading.Event()


POOL = Pool()
