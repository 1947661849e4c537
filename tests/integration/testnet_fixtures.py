"""A small internet of our own: the hosts every network test talks to.

`testnet` (session) starts, on a fresh `--internal` Docker network, a DNS
server, three web servers and a canary (tests/testnet/testnet.py), and hands
out a `TestNet` to point sandboxes at and to read the hosts' records from.
Those records are the judges of the security tests: an attack passes only
when it failed inside the kernel AND no host shows that anything arrived.

Everything created is labelled `awf-kernel.test=true` (plus a per-run label)
and removed by label when the session ends, even when setup fails half-way.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, ImageNotFound, NotFound

from tests.conftest import require_docker

CONTEXT = Path(__file__).resolve().parents[1] / "testnet"
CONTEXT_FILES = ("Dockerfile", "testnet.py")  # what .dockerignore lets into the build
IMAGE = "awf-kernel-testnet:latest"
BASE_IMAGE = "debian:bookworm-slim"
LABEL = "awf-kernel.test"
RUN_LABEL = "awf-kernel.testnet"  # = the network name: finds one run's resources
HASH_LABEL = "awf-kernel.testnet.context-hash"

# name -> the names its certificate covers; the DNS table is derived from it.
WEB_HOSTS = {
    "allowed.test": ["allowed.test", "*.allowed.test"],
    "blocked.test": ["blocked.test", "*.blocked.test"],
    "other.test": ["other.test"],
}
CANARY = "canary.test"
READY_TIMEOUT = 30.0


@dataclass
class TestNet:
    """The running test internet. Read events after a `mark()`:

        m = testnet.mark(); <attack>; assert testnet.canary_hits(since=m) == []

    Event dicts (all carry `event`, `src` and `t`):
      dns_queries: {event: query|connect, name (lowercase, "" if unparsable), qtype ("A", "AAAA", ...),
                    proto: udp|tcp}  -- `connect` is a TCP connection, recorded before any query
      web_hits:    {event: connect|tls|request, name, port (80/8080/443/8443), tls, sni, ok,
                    method, path, host}  -- connect at accept, tls after the handshake (sni even
                    if it failed), request per HTTP request
      canary_hits: {event: connect|data|datagram, proto, port, hex (first bytes)}
    """

    __test__ = False  # not a test class, despite the name

    network: str
    subnet: str
    gateway: str  # the Docker host's address on the test network
    dns_ip: str
    ips: dict[str, str]
    image: str = IMAGE
    settle: float = 0.3  # seconds for in-flight packets to reach a server and its log
    _containers: dict = field(default_factory=dict, repr=False)  # "dns" / host name -> Container

    def mark(self) -> dict[str, int]:
        """A cursor: how many log lines each host has written so far."""
        time.sleep(self.settle)  # earlier tests' stragglers belong before the mark
        return {key: len(self._lines(key)) for key in self._containers}

    def dns_queries(self, since: dict | None = None) -> list[dict]:
        return self._events("dns", since)

    def web_hits(self, name: str, since: dict | None = None) -> list[dict]:
        if name not in WEB_HOSTS:
            raise KeyError(f"{name!r} is not a web host of the testnet ({', '.join(WEB_HOSTS)})")
        return self._events(name, since)

    def canary_hits(self, since: dict | None = None) -> list[dict]:
        return self._events(CANARY, since)

    def run_client(self, code: str, timeout: float = 60) -> str:
        """Run Python code in a throwaway container on the test network (resolving
        through the test DNS only); returns its output, raises if it failed."""
        c = self._client().containers.create(
            self.image, entrypoint=["python3", "-c", code], network=self.network,
            dns=[self.dns_ip], labels={LABEL: "true", RUN_LABEL: self.network})
        try:
            c.start()
            status = c.wait(timeout=timeout)["StatusCode"]
            out = c.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            c.remove(force=True)
        if status != 0:
            raise RuntimeError(f"client exited {status}:\n{out}")
        return out

    def logs(self, key: str) -> str:
        """Everything a host wrote (stdout and stderr), for debugging a failure."""
        return self._containers[key].logs(stdout=True, stderr=True).decode(errors="replace")

    def _client(self):
        return next(iter(self._containers.values())).client

    def _lines(self, key: str) -> list[str]:
        return self._containers[key].logs(stdout=True, stderr=False).decode(errors="replace").splitlines()

    def _events(self, key: str, since: dict | None) -> list[dict]:
        time.sleep(self.settle)
        out = []
        for line in self._lines(key)[(since or {}).get(key, 0):]:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") != "ready":
                out.append(event)
        return out


# --- the image -----------------------------------------------------------------------------

def context_hash() -> str:
    h = hashlib.sha256()
    for name in CONTEXT_FILES:
        h.update(name.encode() + b"\0" + (CONTEXT / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_image(client) -> str:
    """Build the testnet image unless the one tagged was built from this very context."""
    digest = context_hash()
    old = None
    try:
        old = client.images.get(IMAGE)
        if old.labels.get(HASH_LABEL) == digest:
            return IMAGE
    except ImageNotFound:
        pass
    try:
        client.images.get(BASE_IMAGE)
    except ImageNotFound:
        raise RuntimeError(f"base image {BASE_IMAGE} is missing and there is no registry: "
                           "create it with scripts/ensure-docker.sh") from None
    image, _ = client.images.build(path=str(CONTEXT), tag=IMAGE, rm=True, forcerm=True, pull=False,
                                   labels={HASH_LABEL: digest})
    if old is not None and old.id != image.id:
        try:
            client.images.remove(old.id)  # the stale build, now untagged
        except APIError:
            pass  # still used by someone's container: leave it
    return IMAGE


# --- the network -----------------------------------------------------------------------------

def _new_name() -> str:
    return f"awf-testnet-{secrets.token_hex(4)}"


def _ip(container, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def _wait_ready(container, timeout: float = READY_TIMEOUT) -> None:
    """Each server prints a `ready` event once all its sockets are bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b'"event": "ready"' in container.logs(stdout=True, stderr=False):
            return
        container.reload()
        if container.status not in ("created", "running"):
            break
        time.sleep(0.05)
    logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
    raise RuntimeError(f"testnet host {container.name} not ready ({container.status}):\n{logs}")


def remove_run(client, name: str) -> None:
    """Remove one run's containers and network, found by label (so also those
    whose creation was interrupted before we held a handle on them)."""
    for c in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={name}"}):
        try:
            c.remove(force=True)
        except NotFound:
            pass
    for n in client.networks.list(filters={"label": f"{RUN_LABEL}={name}"}):
        try:
            n.remove()
        except NotFound:
            pass


@contextmanager
def running_testnet(client=None):
    """Start the test internet, yield a TestNet, remove everything afterwards."""
    client = client or docker.from_env()
    image = ensure_image(client)
    name = _new_name()
    labels = {LABEL: "true", RUN_LABEL: name}
    try:
        network = client.networks.create(name, driver="bridge", internal=True, labels=labels)
        network.reload()
        ipam = network.attrs["IPAM"]["Config"][0]

        def start(role: str, *args: str):
            # The hosts make no lookups of their own; only clients get `--dns <test DNS>`.
            slug = args[0].split(",")[0].split(".")[0] if args and role == "web" else role
            return client.containers.run(image, [role, *args], name=f"{name}-{slug}", detach=True,
                                         network=name, labels=labels)

        containers = {host: start("web", ",".join(names)) for host, names in WEB_HOSTS.items()}
        containers[CANARY] = start("canary")
        ips = {host: _ip(c, name) for host, c in containers.items()}
        # Started last: its table needs the others' addresses, which Docker picks.
        table = [f"{n}={ips[host]}" for host, names in WEB_HOSTS.items() for n in names]
        table.append(f"{CANARY}={ips[CANARY]}")
        containers["dns"] = start("dns", *table)
        for c in containers.values():
            _wait_ready(c)
        yield TestNet(network=name, subnet=ipam["Subnet"], gateway=ipam["Gateway"],
                      dns_ip=_ip(containers["dns"], name), ips=ips, image=image,
                      _containers=containers)
    finally:
        remove_run(client, name)


@pytest.fixture(scope="session")
def testnet():
    require_docker()
    with running_testnet() as net:
        yield net


# --- the Docker host as a target -------------------------------------------------------------

@dataclass
class HostListener:
    """A TCP listener on the Docker host's address on the test network. `hits`
    holds one {"src", "hex"} per connection (appended at accept time)."""

    host: str
    port: int
    hits: list = field(default_factory=list)


@pytest.fixture
def host_listener(testnet):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((testnet.gateway, 0))
    srv.listen(16)
    srv.settimeout(0.2)
    listener = HostListener(testnet.gateway, srv.getsockname()[1])
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, (src, _) = srv.accept()
            except OSError:
                continue
            hit = {"src": src, "hex": ""}
            listener.hits.append(hit)
            with conn:
                conn.settimeout(0.5)
                try:
                    hit["hex"] = conn.recv(256).hex()
                except OSError:
                    pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join()
        srv.close()
