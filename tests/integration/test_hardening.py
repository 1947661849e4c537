"""Holes an outside attack run found, attacked again from inside a kernel.

Same rules as test_attacks.py: an attack passes only when it fails inside the
kernel AND the judges (canary, test DNS log, web logs, host listeners, host
files) show that nothing arrived.
"""

from __future__ import annotations

import glob
import os
import socket
import threading
import time

import docker
import pytest

from awf_kernel import naming
from awf_kernel.sandbox import docker as sandbox
from tests.integration.conftest import ALLOW
from tests.integration.gvisor import routed, under_gvisor
from tests.integration.test_attacks import TCP


def _pod(docker_client, kernel_id, role):
    """The kernel's pod container of that role (a warm pool pod's too)."""
    return [c for c in sandbox.pod_containers(kernel_id) if c.labels[naming.ROLE] == role][0]


def _wait_stopped(container, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while container.status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        container.reload()


def _assert_reported_dead(k, timeout: float = 10) -> None:
    """jupyter_client's is_alive (the provisioner's poll) turns False in time."""
    deadline = time.monotonic() + timeout
    while k.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not k.km.is_alive()


@pytest.fixture
def listener_everywhere():
    """A TCP listener on every host address: any connection from a pod to the
    Docker host shows up in `hits`."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    hits: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                continue
            hits.append(addr)
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], hits
    finally:
        stop.set()
        t.join()
        srv.close()


# --- 3. allowed names that point inside the network ----------------------------------------


def test_allowed_names_pointing_inside_reach_nothing(kernel, testnet, host_listener):
    """`*.allowed.test` is allowed, but inside.allowed.test answers with the
    canary's address and gateway.allowed.test with the Docker host's: neither
    may be reached, by proxy env or transparently, on 80 or 443."""
    inside = testnet.inside
    mark = testnet.mark()
    res = kernel.probe(TCP, f"""
        import requests
        out = {{}}
        for name in {sorted(n for n in inside if inside[n] not in ("127.0.0.1",) and not inside[n].startswith("169.254"))!r}:
            for scheme in ("http", "https"):
                for proxies in (None, {{"http": None, "https": None}}):
                    key = f"{{scheme}}://{{name}} {{'env' if proxies is None else 'direct'}}"
                    try:
                        r = requests.get(f"{{scheme}}://{{name}}/", timeout=5, verify=False,
                                         **({{}} if proxies is None else {{"proxies": proxies}}))
                        out[key] = r.status_code
                    except requests.RequestException as e:
                        out[key] = type(e).__name__
            out[name + " port {host_listener.port}"] = tcp(name, {host_listener.port})
        print(json.dumps(out))
    """, timeout=180)
    for what, result in res.items():
        assert result != 200 and not str(result).startswith("connected:h"), (what, res)
    assert testnet.canary_hits(since=mark) == []
    assert host_listener.hits == []


def test_private_answer_never_reaches_the_kernel(kernel, testnet):
    """The pod's resolver drops answers that are not globally routable (and not
    opted in): the kernel never learns the inside address."""
    res = kernel.probe(f"""
        import json, socket
        out = {{}}
        for name in {sorted(testnet.inside)!r}:
            try:
                out[name] = sorted({{a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}})
            except socket.gaierror as e:
                out[name] = []
        out["allowed.test"] = sorted({{a[4][0] for a in socket.getaddrinfo("allowed.test", 80, socket.AF_INET)}})
        print(json.dumps(out))
    """)
    assert res.pop("allowed.test") == [testnet.ips["allowed.test"]]
    assert all(v == [] for v in res.values()), res


# --- 4. the kernel and the proxy's own sockets ---------------------------------------------


def test_kernel_cannot_bind_or_impersonate_the_resolver(kernel, testnet):
    """Every address and port the kernel could answer DNS or proxy requests
    on, held while it resolves: the answers stay the pod resolver's."""
    res = kernel.probe(TCP, """
        out, held = {}, []
        for kind, typ in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
            for addr in sorted({"127.0.0.1", "0.0.0.0", "127.0.0.11", PROXY}):
                for port in (53, 5353, 3128, 3129, 3130):
                    s = socket.socket(socket.AF_INET, typ)
                    try:
                        s.bind((addr, port)); out[f"{kind} {addr}:{port}"] = "bound"; held.append(s)
                    except OSError as e:
                        out[f"{kind} {addr}:{port}"] = type(e).__name__; s.close()
        answers = {}
        for name in ("allowed.test", "blocked.test"):
            try:
                answers[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})
            except socket.gaierror as e:
                answers[name] = "gaierror"
        for s in held:
            s.close()
        print(json.dumps({"bind": out, "answers": answers, "proxy": PROXY}))
    """)
    assert res["answers"] == {"allowed.test": [testnet.ips["allowed.test"]], "blocked.test": "gaierror"}, res
    bound = [k for k, v in res["bind"].items() if v == "bound"]
    # the proxy's own address and ports are taken before the kernel exists
    # (Squid's ports are TCP only: a UDP socket on them receives nothing)
    proxy = res["proxy"]
    assert [k for k in bound if k.split()[1].split(":")[0] == proxy
            and (k.startswith("tcp") or k.endswith((":53", ":5353")))] == [], res
    if routed():
        # A namespace of the kernel's own (gVisor's stack): its loopback holds none
        # of the proxy's sockets, so what it binds there answers only itself
        # (checked above: the answers stayed the pod resolver's).
        assert proxy == "169.254.253.1", res
        return
    assert [k for k in bound if k.endswith(":53")] == [], res  # port 53 is privileged, on every address
    taken = [k for k in bound if k.split()[1].split(":")[0] in ("127.0.0.1", "0.0.0.0")
             and (k.startswith("tcp") or k.endswith(":5353"))]
    assert taken == [], res


def test_forged_dns_answers_from_inside_the_pod_are_not_accepted(kernel, testnet):
    """The kernel sees the proxy's sockets in /proc/net/udp (shared namespace);
    it floods every UDP socket on loopback and the proxy's addresses with
    answers that point allowed.test at the canary, while asking for it. The
    answer must stay the real one, and the canary must see nothing."""
    mark = testnet.mark()
    res = kernel.probe(TCP, f"""
        import socket, struct, threading, time, requests
        def sockets():
            out = set()
            for line in open("/proc/net/udp").read().splitlines()[1:]:
                local = line.split()[1]
                ip, port = local.split(":")
                ip = socket.inet_ntoa(bytes.fromhex(ip)[::-1])
                out.add((ip, int(port, 16)))
            return out
        def forged(qid, name):
            q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0"
            head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
            return head + q + struct.pack("!HH", 1, 1) + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + socket.inet_aton("{testnet.ips['canary.test']}")
        stop = threading.Event()
        sent = [0, 0]
        def flood():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            while not stop.is_set():
                # and the resolver's port at the far end of a routed pod's link (PROXY)
                for ip, port in sockets() | {{(PROXY, 5353)}}:
                    for qid in range(0, 65536, 4096):
                        try:
                            s.sendto(forged(qid, "allowed.test"), ("127.0.0.1" if ip == "0.0.0.0" else ip, port)); sent[0] += 1
                        except OSError:
                            sent[1] += 1
        t = threading.Thread(target=flood); t.start()
        answers = set()
        try:
            for i in range(20):
                try:
                    answers |= {{a[4][0] for a in socket.getaddrinfo(f"allowed.test", 80, socket.AF_INET)}}
                except socket.gaierror:
                    pass
            code = requests.get("http://allowed.test/", timeout=10).status_code
        finally:
            stop.set(); t.join()
        print(json.dumps({{"answers": sorted(answers), "sent": sent, "code": code}}))
    """, timeout=120)
    assert res["answers"] == [testnet.ips["allowed.test"]], res
    assert testnet.canary_hits(since=mark) == []


def test_kernel_reaches_the_proxy_only_through_its_front_doors(kernel, testnet):
    """Loopback ports the kernel must not use directly: the resolver (5353,
    only through the REDIRECT of port 53), Squid's intercept ports, and the
    real ports of Docker's embedded DNS on 127.0.0.11 (they forward to the
    host's resolvers, around the pod's resolver)."""
    mark = testnet.mark()
    res = kernel.probe(TCP, """
        import struct
        import os
        def listeners(path, tcp_only):
            out = set()
            for line in open(path).read().splitlines()[1:]:
                f = line.split()
                if (tcp_only and f[3] != "0A") or int(f[7]) == os.getuid():
                    continue  # not listening, or the kernel's own socket
                ip, port = f[1].split(":")
                out.add((socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)))
            return out
        q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\\x05leak1\\x07blocked\\x04test\\x00" + struct.pack("!HH", 1, 1)
        out = {}
        # The proxy's internal ports, known by number: under gVisor the kernel's
        # /proc/net is gVisor's own and lists none of the proxy's sockets.
        # A routed pod's proxy is at the far end of the kernel's link (PROXY), not on its loopback.
        known_tcp = {(a, p) for a in {"127.0.0.1", PROXY} for p in (3129, 3130, 5353)}
        known_udp = {(a, 5353) for a in {"127.0.0.1", PROXY}}
        for ip, port in sorted(listeners("/proc/net/tcp", True) | known_tcp):
            if port in (3128,) or ip not in ("127.0.0.1", "127.0.0.11", PROXY):
                continue
            out[f"tcp {ip}:{port}"] = tcp(ip, port, struct.pack("!H", len(q)) + q)
        for ip, port in sorted(listeners("/proc/net/udp", False) | known_udp):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
            try:
                s.sendto(q, (ip if ip != "0.0.0.0" else "127.0.0.1", port)); s.recv(512); out[f"udp {ip}:{port}"] = "answered"
            except OSError as e:
                out[f"udp {ip}:{port}"] = type(e).__name__
            finally:
                s.close()
        print(json.dumps(out))
    """)
    # Docker's embedded DNS ports are random: found only through /proc/net, which
    # under gVisor is gVisor's own, so there the kernel cannot even find them.
    assert under_gvisor() or any("127.0.0.11" in t for t in res), f"the probe found no Docker DNS socket: {res}"
    for target, result in res.items():
        assert result != "answered", (target, res)
        if target.startswith("tcp"):
            assert result.startswith("error:"), (target, res)
    assert [q for q in testnet.dns_queries(since=mark) if "leak1" in q.get("name", "")] == []


# --- 5. the kernel's ports belong to the Jupyter server -------------------------------------


def test_other_containers_cannot_reach_the_kernels_ports(start_kernel, testnet, docker_client):
    """On the network that publishes the kernel's ports, another container
    connects to them at the proxy's address: refused, and no iopub message."""
    k = start_kernel(policy={}, settings={"egress_network": "bridge", "dns_servers": [testnet.dns_ip]})
    proxy = _pod(docker_client, k.kernel_id, "proxy")
    ip = proxy.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    ports = [k.km.shell_port, k.km.iopub_port, k.km.stdin_port, k.km.hb_port, k.km.control_port]
    code = f"""
import json, socket
out = {{}}
for p in {ports!r}:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect(("{ip}", p)); s.sendall(b"\\xff\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x7f")
        out[p] = "connected:" + s.recv(64).hex()
    except OSError as e:
        out[p] = "error:" + type(e).__name__
    finally:
        s.close()
print(json.dumps(out))
"""
    c = docker_client.containers.create(testnet.image, entrypoint=["python3", "-c", code], network="bridge",
                                        labels={"awf-kernel.test": "true"})
    try:
        c.start()
        c.wait(timeout=60)
        out = c.logs(stdout=True, stderr=False).decode()
    finally:
        c.remove(force=True)
    assert out.strip(), "the neighbour container printed nothing"
    import json
    res = json.loads(out.strip().splitlines()[-1])
    assert all(v.startswith("error:") for v in res.values()), res
    assert k.run("print(1)")["stdout"] == "1\n"  # the server side still reaches it


# --- 6. fail closed when a pod container runs again -------------------------------------------


def test_restarted_proxy_refuses_and_the_kernel_is_dead(start_kernel, docker_client, testnet):
    k = start_kernel(policy={"allow_domains": ALLOW})
    proxy = _pod(docker_client, k.kernel_id, "proxy")
    kernel_c = _pod(docker_client, k.kernel_id, "kernel")
    mark = testnet.mark()
    proxy.restart(timeout=1)
    _wait_stopped(proxy)
    assert proxy.status != "running" and proxy.attrs["State"]["ExitCode"] == 66, proxy.logs(tail=5)
    try:
        kernel_c.restart(timeout=1)
    except docker.errors.APIError:
        pass  # cannot join the namespace of a stopped proxy: fail closed
    _assert_reported_dead(k)
    kernel_c.reload()
    assert kernel_c.status != "running"
    assert testnet.canary_hits(since=mark) == []


def test_restarted_kernel_container_is_reported_dead(start_kernel, docker_client):
    k = start_kernel(policy={"allow_domains": ALLOW})
    kernel_c = _pod(docker_client, k.kernel_id, "kernel")
    kernel_c.restart(timeout=1)
    _assert_reported_dead(k)
    kernel_c.reload()
    assert kernel_c.status != "running"


# --- 8. the host's disk ------------------------------------------------------------------


def test_kernel_cannot_fill_the_hosts_disk(start_kernel, docker_client):
    k = start_kernel(policy={}, settings={"tmp_size": "64m"})
    kernel_c = _pod(docker_client, k.kernel_id, "kernel")
    proxy = _pod(docker_client, k.kernel_id, "proxy")
    for c in (kernel_c, proxy):
        cfg = c.attrs["HostConfig"]["LogConfig"]
        assert cfg["Type"] == "json-file" and cfg["Config"]["max-size"] == "10m", cfg
    res = k.probe("""
        import json, os
        out = {}
        chunk = b"x" * (1 << 20)
        for path in ("/usr/local/fill", "/fill", "/awf/connection/fill", "/tmp/fill"):
            try:
                with open(path, "wb") as f:
                    for _ in range(100):
                        f.write(chunk)
                out[path] = "wrote"
            except OSError as e:
                out[path] = type(e).__name__
            try:
                os.remove(path)
            except OSError:
                pass
        line = b"y" * 1023 + b"\\n"
        with open("/proc/1/fd/1", "wb", buffering=0) as raw:   # the container's own stdout (tini's)
            for _ in range(30 * 1024):
                raw.write(line)   # 30 MB into Docker's log of the container
        print(json.dumps(out))
    """, timeout=180)
    assert res["/usr/local/fill"] == "OSError" or res["/usr/local/fill"] in ("PermissionError",), res
    assert res["/fill"] != "wrote" and res["/awf/connection/fill"] != "wrote", res
    assert res["/tmp/fill"] == "OSError", res  # ENOSPC at the tmpfs size
    time.sleep(1)
    logs = glob.glob(f"/var/lib/docker/containers/{kernel_c.id}/*-json.log*")
    if os.getuid() == 0 and logs:
        assert sum(os.path.getsize(p) for p in logs) <= 21 * 1024 * 1024
    # the connection folder on the host holds the connection file and nothing else
    # (a routed pod's kernel also gets its resolv.conf from there, read-only)
    conn_dir = os.path.dirname([m["Source"] for m in kernel_c.attrs["Mounts"]
                                if m["Destination"] == "/awf/connection/kernel.json"][0])
    assert sorted(os.listdir(conn_dir)) == (["kernel.json", "resolv.conf"] if routed() else ["kernel.json"])


def test_proxy_ends_when_its_resolver_dies(start_kernel, docker_client):
    """Were the resolver to die (OOM, a crash) while Squid ran on, port 5353
    would be free in the namespace the kernel shares: it could answer Squid's
    lookups. The proxy ends with it instead, and the kernel is reported dead."""
    k = start_kernel(policy={"allow_domains": ALLOW})
    proxy = _pod(docker_client, k.kernel_id, "proxy")
    killed = proxy.exec_run(["python3", "-c", (
        "import os, signal\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if b'resolver.py' in open(f'/proc/{p}/cmdline', 'rb').read() and int(p) != os.getpid():\n"
        "        os.kill(int(p), signal.SIGKILL); print(p)\n")], user="proxy")
    # 137: the proxy (and this exec with it) may already be gone when the exec returns
    assert killed.exit_code in (0, 137) and killed.output.strip(), killed
    _wait_stopped(proxy)
    assert proxy.status != "running", proxy.logs(tail=5)
    _assert_reported_dead(k)
