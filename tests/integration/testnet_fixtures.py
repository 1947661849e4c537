"""A small internet of our own: the hosts every network test talks to.

`testnet` (session) starts, on a fresh `--internal` Docker network, a DNS
server, three web servers and a canary (tests/testnet/testnet.py), and hands
out a `TestNet` to point sandboxes at and to read the hosts' records from.
Those records are the judges of the security tests: an attack passes only
when it failed inside the kernel AND no host shows that anything arrived.

Everything created is labelled `awf-kernel.test=true` (plus a per-run label)
and removed by label when the session ends, even when setup fails half-way.

`beyond_host` (session) is a test host BEYOND the Docker host, the way real
users' traffic leaves: a network namespace behind a veth pair, routed (and,
for Docker's bridges, masqueraded) by the host, addressed from 198.18.0.0/15
(reserved for network testing), running the same server programs with the
same records and the same reading API. Its namespace and veth are named
`awft-<hex>` / `awft<hex>` and tagged with the owning process, so a crashed
run's leftovers are removed at the next start and a live run's never are.

Both DNS tables also hold allowed names that point INSIDE the network (see
`inside_names`), for the "allowed name, private answer" attacks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
# Never a destination: it only ever appears in DNS answers (metadata.allowed.test).
# A test that lets anything resolve it must watch it with `metadata_guard`.
METADATA_IP = "169.254.169.254"


def inside_names(ips: dict[str, str], gateway: str, dns_ip: str) -> dict[str, str]:
    """Allowed names whose answers point inside the network: the canary, the
    Docker host (its address on the network), the DNS server itself, the
    asker's loopback and the cloud metadata address."""
    return {
        "inside.allowed.test": ips[CANARY],
        "gateway.allowed.test": gateway,
        "dns.allowed.test": dns_ip,
        "loopback.allowed.test": "127.0.0.1",
        "metadata.allowed.test": METADATA_IP,
    }


def dns_table(ips: dict[str, str], gateway: str, dns_ip: str) -> list[str]:
    """The `NAME=IP` entries of a test DNS server (exact names win over wildcards)."""
    table = [f"{n}={ips[host]}" for host, names in WEB_HOSTS.items() for n in names]
    table.append(f"{CANARY}={ips[CANARY]}")
    table += [f"{n}={ip}" for n, ip in inside_names(ips, gateway, dns_ip).items()]
    return table


class _Judges:
    """The reading API shared by `TestNet` and `BeyondHost`: the hosts' event
    logs, a cursor into them and throwaway clients. Subclasses say where the
    log lines are (`_keys`, `_lines`) and how a client reaches the hosts."""

    settle: float
    network: str
    dns_ip: str
    gateway: str
    ips: dict
    image: str

    def mark(self) -> dict[str, int]:
        """A cursor: how many log lines each host has written so far."""
        time.sleep(self.settle)  # earlier tests' stragglers belong before the mark
        return {key: len(self._lines(key)) for key in self._keys()}

    def dns_queries(self, since: dict | None = None) -> list[dict]:
        return self._events("dns", since)

    def web_hits(self, name: str, since: dict | None = None) -> list[dict]:
        if name not in WEB_HOSTS:
            raise KeyError(f"{name!r} is not a web host of the testnet ({', '.join(WEB_HOSTS)})")
        return self._events(name, since)

    def canary_hits(self, since: dict | None = None) -> list[dict]:
        return self._events(CANARY, since)

    @property
    def inside(self) -> dict[str, str]:
        """inside.allowed.test & co. -> the address the DNS server answers for them."""
        return inside_names(self.ips, self.gateway, self.dns_ip)

    def run_client(self, code: str, timeout: float = 60) -> str:
        """Run Python code in a throwaway container on `network` (resolving
        through the test DNS only); returns its output, raises if it failed."""
        c = self._docker().containers.create(
            self.image, entrypoint=["python3", "-c", code], network=self.network,
            dns=[self.dns_ip], labels={LABEL: "true", RUN_LABEL: self._run_name()})
        try:
            c.start()
            status = c.wait(timeout=timeout)["StatusCode"]
            out = c.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            c.remove(force=True)
        if status != 0:
            raise RuntimeError(f"client exited {status}:\n{out}")
        return out

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


@dataclass
class TestNet(_Judges):
    """The running test internet. Read events after a `mark()`:

        m = testnet.mark(); <attack>; assert testnet.canary_hits(since=m) == []

    Event dicts (all carry `event`, `src` and `t`):
      dns_queries: {event: query|connect, name (lowercase, "" if unparsable), qtype ("A", "AAAA", ...),
                    proto: udp|tcp}  -- `connect` is a TCP connection, recorded before any query
      web_hits:    {event: connect|tls|request, name, port (80/8080/443/8443), tls, sni, ok,
                    method, path, host}  -- connect at accept, tls after the handshake (sni even
                    if it failed), request per HTTP request
      canary_hits: {event: connect|data|datagram, proto, port, hex (first bytes)}

    `inside` lists the allowed names that point inside the network.
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

    def logs(self, key: str) -> str:
        """Everything a host wrote (stdout and stderr), for debugging a failure."""
        return self._containers[key].logs(stdout=True, stderr=True).decode(errors="replace")

    def _docker(self):
        return next(iter(self._containers.values())).client

    def _run_name(self) -> str:
        return self.network

    def _keys(self):
        return self._containers

    def _lines(self, key: str) -> list[str]:
        return self._containers[key].logs(stdout=True, stderr=False).decode(errors="replace").splitlines()


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


def prebuild_images(client=None) -> None:
    """Build the images tests would otherwise build mid-session, while Docker's
    default bridge can still reach the Debian mirror: scripts/test.sh calls this
    just before its safety net cuts the default bridge off from the uplink."""
    import io

    client = client or docker.from_env()
    ensure_image(client)
    try:
        from tests.integration.test_notices import USER_DOCKERFILE, USER_IMAGE
    except ImportError:
        return
    client.images.build(fileobj=io.BytesIO(USER_DOCKERFILE), tag=USER_IMAGE, rm=True,
                        labels={LABEL: "true"})


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
        # Its own address is picked at its start: it answers it as "self".
        containers["dns"] = start("dns", *dns_table(ips, ipam["Gateway"], "self"))
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


# --- a test host beyond the Docker host ------------------------------------------------------

NETNS_PREFIX = "awft-"  # + token: the namespace
LINK_PREFIX = "awft"    # + token: the host side of the veth pair (the safety net's `awft+`)
# The same thing under another name is a stand-in for the real uplink: a host
# outside the machine that is NOT the beyond host (the safety net's own test).
UPLINK_PREFIX = "awfu"
KINDS = (LINK_PREFIX, UPLINK_PREFIX)
OWNER_TAG = "awf-kernel-test"  # link alias / rule comment: "awf-kernel-test pid=P start=S"
BEYOND_SUPERNET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: for network testing
BEYOND_PREFIX = 29  # .1 the host side, .2 dns, .3-.5 web, .6 canary
TESTNET_PY = CONTEXT / "testnet.py"
STALE_AFTER = 120.0  # seconds a namespace without its veth may be a run still setting up


@dataclass
class BeyondHost(_Judges):
    """A test host beyond the Docker host, reached the way real users' traffic
    leaves a machine: from a container on Docker's default `bridge`, through the
    host's routing (and Docker's masquerading, so the hosts see `gateway` as the
    source), out of a veth into a network namespace holding the DNS server, the
    web servers and the canary, each on its own address. Same events and the
    same reading API as `TestNet`; `run_client` uses the `bridge` network."""

    __test__ = False

    netns: str
    link: str  # host side of the veth pair
    subnet: str
    gateway: str  # the host side's address: the Docker host as the beyond host sees it
    dns_ip: str
    ips: dict[str, str]
    image: str = IMAGE
    network: str = "bridge"  # the Docker network clients use to get here
    settle: float = 0.3
    _logdir: Path = field(default=None, repr=False)
    _keys_: tuple = field(default=(), repr=False)

    def logs(self, key: str) -> str:
        """Everything a host wrote (stdout and stderr), for debugging a failure."""
        return "".join(_read(self._logdir / f"{key}.{ext}") for ext in ("log", "err"))

    def _docker(self):
        return docker.from_env()

    def _run_name(self) -> str:
        return self.netns

    def _keys(self):
        return self._keys_

    def _lines(self, key: str) -> list[str]:
        return _read(self._logdir / f"{key}.log").splitlines()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def require_netns():
    """Creating namespaces and links needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2."""
    msg = None
    if shutil.which("ip") is None:
        msg = "iproute2 (`ip`) is missing"
    elif os.geteuid() != 0:
        msg = "the beyond host needs root (it creates a network namespace and a veth pair)"
    if msg:
        from tests.conftest import in_ci
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time since boot


def owner_tag() -> str:
    """Names this process (pid + start time, so a reused pid is not mistaken for it)."""
    return f"{OWNER_TAG} pid={os.getpid()} start={_start_time(os.getpid())}"


def owner_alive(tag: str) -> bool:
    m = re.search(r"pid=(\d+) start=(\d+)", tag or "")
    return bool(m) and _start_time(int(m.group(1))) == m.group(2)


def _netns_names() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tuple(k + "-" for k in KINDS))]


def _links() -> dict[str, dict]:
    out = _run("ip", "-j", "link", "show", check=False).stdout or "[]"
    return {link["ifname"]: link for link in json.loads(out)}


def _netns_pids(netns: str) -> list[int]:
    out = _run("ip", "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def remove_beyond_host(netns: str, link: str, logdir: Path | None = None) -> None:
    """Remove one beyond host: its processes (found by namespace, so also those
    of a crashed run), the namespace, the veth pair and the logs. Idempotent."""
    for _ in range(50):
        pids = _netns_pids(netns) if netns in _netns_names() else []
        if not pids:
            break
        for pid in pids:  # our servers (and their openssl children), nothing else lives there
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if netns in _netns_names():
        _run("ip", "netns", "del", netns, check=False)
    if link in _links():  # normally gone with the namespace (its peer lived there)
        _run("ip", "link", "del", link, check=False)
    if logdir is not None:
        shutil.rmtree(logdir, ignore_errors=True)


def _new_token() -> str:
    return secrets.token_hex(4)


def _logdir(token: str, kind: str = LINK_PREFIX) -> Path:
    return Path(tempfile.gettempdir()) / f"{kind}-{token}"


def clean_stale_beyond_hosts(client=None) -> list[str]:
    """Remove the beyond hosts of runs that died without cleaning up. A host
    whose owning process still runs (another session) is left alone, and so is
    a namespace younger than STALE_AFTER without its veth (still being set up)."""
    links, removed = _links(), []
    found = {tuple(n.split("-", 1)) for n in _netns_names()}
    found |= {(n[:4], n[4:]) for n in links if re.fullmatch(f"({'|'.join(KINDS)})[0-9a-f]{{8}}", n)}
    for kind, token in sorted(found):
        netns, link = f"{kind}-{token}", f"{kind}{token}"
        if link in links:
            if owner_alive(links[link].get("ifalias", "")):
                continue
        else:
            try:
                age = time.time() - os.stat(f"/run/netns/{netns}").st_mtime
            except OSError:
                age = STALE_AFTER
            if age < STALE_AFTER:
                continue
        remove_beyond_host(netns, link, _logdir(token, kind))
        if client is not None:
            remove_run(client, netns)
        removed.append(netns)
    return removed


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for route in json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        if route.get("dst") and route["dst"] != "default":
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(_run("ip", "-j", "-4", "addr").stdout or "[]"):
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return used


def pick_subnet() -> ipaddress.IPv4Network:
    """A random /29 of 198.18.0.0/15 that no route or address of this host touches."""
    used = _used_networks()
    count = 2 ** (BEYOND_PREFIX - BEYOND_SUPERNET.prefixlen)
    size = 2 ** (32 - BEYOND_PREFIX)
    for _ in range(200):
        net = ipaddress.ip_network(f"{BEYOND_SUPERNET.network_address + secrets.randbelow(count) * size}"
                                   f"/{BEYOND_PREFIX}")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /29 in 198.18.0.0/15 on this host")


def _spawn(netns: str, logdir: Path, key: str, bind: str, role: str, *args: str) -> subprocess.Popen:
    """One testnet.py server inside the namespace, on its own address, with the
    interpreter running the tests (testnet.py is stdlib only)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
           "TESTNET_BIND": bind, "TESTNET_TLS_DIR": str(logdir / f"tls-{key}")}
    with open(logdir / f"{key}.log", "wb") as out, open(logdir / f"{key}.err", "wb") as err:
        return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-I", "-u", str(TESTNET_PY),
                                 role, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                start_new_session=True, close_fds=True)


def _wait_ready_file(proc: subprocess.Popen, log: Path, key: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if '"event": "ready"' in _read(log):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"beyond host {key} not ready (exit {proc.poll()}):\n{_read(log)}"
                       f"{_read(log.with_suffix('.err'))}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _disable_ipv6(*cmd_prefix: str, names=("all", "default", "eth0")) -> None:
    """Keep the veth quiet (no router solicitations, no IPv6 at all): best effort."""
    for name in names:
        _run(*cmd_prefix, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6", check=False)


@contextmanager
def running_beyond_host(client=None, kind: str = LINK_PREFIX):
    """Create the beyond host, yield a BeyondHost, remove everything afterwards
    (also when setup fails half-way). kind=UPLINK_PREFIX makes a stand-in for
    the real uplink instead (the safety net lets nothing through to it)."""
    assert kind in KINDS
    client = client or docker.from_env()
    image = ensure_image(client)
    clean_stale_beyond_hosts(client)
    if _run("sysctl", "-n", "net.ipv4.ip_forward", check=False).stdout.strip() != "1":
        # Docker turns it on for its bridges; without it nothing would reach us either.
        raise RuntimeError("net.ipv4.ip_forward is 0 on this host: Docker's bridges cannot route "
                           "anywhere (start dockerd, which enables it)")
    token = _new_token()
    netns, link, logdir = f"{kind}-{token}", f"{kind}{token}", _logdir(token, kind)
    procs: dict[str, subprocess.Popen] = {}
    try:
        logdir.mkdir(mode=0o700)
        net = pick_subnet()
        gateway, dns_ip, *web_ips, canary_ip = [str(a) for a in list(net.hosts())[:6]]
        ips = dict(zip(WEB_HOSTS, web_ips))
        ips[CANARY] = canary_ip
        _run("ip", "netns", "add", netns)
        # The peer is born inside the namespace: no moment where it sits in the host's.
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "link", "set", link, "alias", owner_tag())
        _disable_ipv6(names=(link,))
        _run("ip", "addr", "add", f"{gateway}/{BEYOND_PREFIX}", "dev", link)
        _run("ip", "link", "set", link, "up")
        _disable_ipv6("ip", "netns", "exec", netns)
        for addr in [dns_ip, *web_ips, canary_ip]:
            _run("ip", "-n", netns, "addr", "add", f"{addr}/{BEYOND_PREFIX}", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", gateway)

        for host, names in WEB_HOSTS.items():
            procs[host] = _spawn(netns, logdir, host, ips[host], "web", ",".join(names))
        procs[CANARY] = _spawn(netns, logdir, CANARY, canary_ip, "canary")
        procs["dns"] = _spawn(netns, logdir, "dns", dns_ip, "dns", *dns_table(ips, gateway, dns_ip))
        for key, proc in procs.items():
            _wait_ready_file(proc, logdir / f"{key}.log", key)
        yield BeyondHost(netns=netns, link=link, subnet=str(net), gateway=gateway, dns_ip=dns_ip, ips=ips,
                         image=image, _logdir=logdir, _keys_=tuple(procs))
    finally:
        _stop(list(procs.values()))
        remove_beyond_host(netns, link, logdir)
        remove_run(client, netns)


@pytest.fixture(scope="session")
def beyond_host():
    require_docker()
    require_netns()
    with running_beyond_host() as host:
        yield host


# --- the Docker host as a target -------------------------------------------------------------

@dataclass
class HostListener:
    """A TCP listener on one of the Docker host's addresses. `hits` holds one
    {"src", "hex"} per connection (appended at accept time)."""

    host: str
    port: int
    hits: list = field(default_factory=list)


@contextmanager
def listening(host: str, port: int = 0):
    """A HostListener on host:port (port 0: any free one) until the block ends."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    srv.settimeout(0.2)
    listener = HostListener(host, srv.getsockname()[1])
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


@pytest.fixture
def host_listener(testnet):
    """The Docker host's address on the test network (testnet.gateway)."""
    with listening(testnet.gateway) as listener:
        yield listener


@pytest.fixture
def beyond_listener(beyond_host):
    """The Docker host as the beyond host sees it: the veth's host side (beyond_host.gateway)."""
    with listening(beyond_host.gateway) as listener:
        yield listener


# --- addresses nothing may reach ------------------------------------------------------------------

GUARD_INPUTS = ("docker0", "br-+", *(k + "+" for k in KINDS))


@dataclass
class Guard:
    """Counting DROP rules (raw table, before routing) for one destination,
    for packets arriving from Docker's bridges and the beyond hosts. The host's
    own traffic is untouched. `packets()` is how many were caught: a test that
    lets anything resolve to `dest` asserts it is 0."""

    dest: str
    comment: str

    def packets(self) -> int:
        total = 0
        for line in _run("iptables", "-w", "-t", "raw", "-v", "-S", "PREROUTING").stdout.splitlines():
            if self.comment in line:
                m = re.search(r"-c (\d+) \d+", line)
                total += int(m.group(1)) if m else 0
        return total


def _guard_rules(dest: str, comment: str) -> list[list[str]]:
    return [["PREROUTING", "-i", i, "-d", dest, "-m", "comment", "--comment", comment, "-j", "DROP"]
            for i in GUARD_INPUTS]


def clean_stale_guards() -> None:
    """Delete the guard rules of runs that died without removing them."""
    for line in _run("iptables", "-w", "-t", "raw", "-S", "PREROUTING", check=False).stdout.splitlines():
        if OWNER_TAG in line and line.startswith("-A ") and not owner_alive(line):
            _run("iptables", "-w", "-t", "raw", "-D", *shlex.split(line)[1:], check=False)


@contextmanager
def guarding(dest: str):
    clean_stale_guards()
    comment = f"{owner_tag()} guard={secrets.token_hex(3)}"
    rules = _guard_rules(dest, comment)
    try:
        for rule in rules:
            _run("iptables", "-w", "-t", "raw", "-I", *rule)
        yield Guard(dest, comment)
    finally:
        for rule in rules:
            _run("iptables", "-w", "-t", "raw", "-D", *rule, check=False)


@pytest.fixture
def metadata_guard():
    """Catches (drops and counts) anything a container sends towards the
    link-local block, where metadata.allowed.test points."""
    require_netns()
    with guarding("169.254.0.0/16") as guard:
        yield guard
