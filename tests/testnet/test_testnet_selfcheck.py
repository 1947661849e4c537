"""The judges judged: the test internet must see and record what reaches it.

The security tests pass when the DNS log, the web servers and the canary show
*nothing*; that is only evidence if the same hosts demonstrably record things
that do reach them. Traffic comes from throwaway containers on the test
network (as a sandboxed kernel's would) and from the Docker host itself.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import struct
import time

import docker
import pytest

from tests.conftest import require_docker
from tests.integration import testnet_fixtures as tf

pytestmark = pytest.mark.docker

# The ports the attack suite aims at: the canary must hear every one of them.
REQUIRED_TCP = [21, 22, 25, 53, 80, 443, 853, 2375, 3128, 5353, 8080, 8443, 9999, 50000]
REQUIRED_UDP = [53, 123, 443, 853, 9999, 5353]


def dns_query(server: str, name: str, qtype: int = 1, tcp: bool = False) -> dict:
    """One raw query; returns rcode, flags, answer count and the A records found."""
    q = struct.pack("!HHHHHH", random.randint(0, 0xFFFF), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", qtype, 1)
    if tcp:
        with socket.create_connection((server, 53), timeout=3) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", s.recv(2))
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(q, (server, 53))
            data, _ = s.recvfrom(4096)
    flags, _, ancount = struct.unpack("!HHH", data[2:8])
    # Our server puts the question first and A answers (16 bytes each) last.
    addrs = [socket.inet_ntoa(data[len(data) - 16 * i + 12:len(data) - 16 * i + 16]) for i in range(ancount, 0, -1)]
    return {"rcode": flags & 0xF, "aa": bool(flags & 0x0400), "id_ok": data[:2] == q[:2],
            "ancount": ancount, "a": addrs if qtype == 1 else []}


ME = "import json, socket\nME = socket.gethostbyname(socket.gethostname())\n"


# --- DNS --------------------------------------------------------------------------------------


def test_names_resolve_from_a_container_and_every_query_is_recorded(testnet):
    mark = testnet.mark()
    out = json.loads(testnet.run_client(ME + """
names = ["allowed.test", "api.allowed.test", "a.b.allowed.test", "blocked.test", "x.blocked.test",
         "other.test", "canary.test"]
print(json.dumps({"me": ME, "ips": {n: socket.gethostbyname(n) for n in names}}))
"""))
    ips = testnet.ips
    assert out["ips"] == {
        "allowed.test": ips["allowed.test"], "api.allowed.test": ips["allowed.test"],
        "a.b.allowed.test": ips["allowed.test"], "blocked.test": ips["blocked.test"],
        "x.blocked.test": ips["blocked.test"], "other.test": ips["other.test"], "canary.test": ips["canary.test"],
    }
    assert len(set(ips.values()) | {testnet.dns_ip}) == 5
    queries = testnet.dns_queries(since=mark)
    for name in out["ips"]:
        assert {"name": name, "qtype": "A", "src": out["me"], "proto": "udp"} in \
            [{k: q.get(k) for k in ("name", "qtype", "src", "proto")} for q in queries], (name, queries)


def test_allowed_names_pointing_inside_the_network(testnet):
    """inside/gateway/dns/loopback/metadata.allowed.test: exact names beat the
    *.allowed.test wildcard; dns.allowed.test is the server's own address,
    which it learns from the query (Docker picks it at start)."""
    mark = testnet.mark()
    out = json.loads(testnet.run_client(ME + f"""
print(json.dumps({{n: socket.gethostbyname(n) for n in {list(testnet.inside)!r}}}))
"""))
    assert out == {"inside.allowed.test": testnet.ips["canary.test"], "gateway.allowed.test": testnet.gateway,
                   "dns.allowed.test": testnet.dns_ip, "loopback.allowed.test": "127.0.0.1",
                   "metadata.allowed.test": tf.METADATA_IP}
    assert dns_query(testnet.dns_ip, "dns.allowed.test", tcp=True)["a"] == [testnet.dns_ip]
    assert {q["name"] for q in testnet.dns_queries(since=mark) if q["event"] == "query"} == set(out)
    assert testnet.canary_hits(since=mark) == []


def test_unknown_name_is_nxdomain_and_recorded(testnet):
    mark = testnet.mark()
    out = json.loads(testnet.run_client(ME + f"""
import struct
try:
    socket.gethostbyname("not-in-the-table.test"); res = "resolved"
except socket.gaierror as e:
    res = "NONAME" if e.errno == socket.EAI_NONAME else str(e)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00" + b"\\x05other\\x04test\\x04evil\\x00\\x00\\x01\\x00\\x01",
         ("{testnet.dns_ip}", 53))
print(json.dumps({{"me": ME, "lookup": res, "rcode": s.recv(512)[3] & 0xF}}))
"""))
    assert out["lookup"] == "NONAME" and out["rcode"] == 3
    names = {(q["name"], q["src"]) for q in testnet.dns_queries(since=mark)}
    assert ("not-in-the-table.test", out["me"]) in names
    assert ("other.test.evil", out["me"]) in names


def test_dns_protocol_details(testnet):
    """What a forwarding resolver in the pod relies on, asked straight from the host."""
    dns, ips = testnet.dns_ip, testnet.ips
    mark = testnet.mark()
    a = dns_query(dns, "Allowed.TEST")
    assert a == {"rcode": 0, "aa": True, "id_ok": True, "ancount": 1, "a": [ips["allowed.test"]]}
    assert dns_query(dns, "deep.sub.blocked.test")["a"] == [ips["blocked.test"]]
    assert dns_query(dns, "allowed.test", qtype=28) == {"rcode": 0, "aa": True, "id_ok": True, "ancount": 0, "a": []}
    assert dns_query(dns, "x.other.test")["rcode"] == 3  # other.test has no wildcard
    assert dns_query(dns, "test")["rcode"] == 3
    assert dns_query(dns, "allowed.test.evil.test")["rcode"] == 3
    assert dns_query(dns, "canary.test", tcp=True)["a"] == [ips["canary.test"]]
    seen = [(q["event"], q["name"], q["qtype"], q["proto"], q["src"]) for q in testnet.dns_queries(since=mark)]
    gw = testnet.gateway
    assert seen == [
        ("query", "allowed.test", "A", "udp", gw), ("query", "deep.sub.blocked.test", "A", "udp", gw),
        ("query", "allowed.test", "AAAA", "udp", gw), ("query", "x.other.test", "A", "udp", gw),
        ("query", "test", "A", "udp", gw), ("query", "allowed.test.evil.test", "A", "udp", gw),
        ("connect", "", None, "tcp", gw), ("query", "canary.test", "A", "tcp", gw),
    ]


def test_junk_to_the_dns_port_is_recorded(testnet):
    mark = testnet.mark()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"not dns", (testnet.dns_ip, 53))
    with socket.create_connection((testnet.dns_ip, 53), timeout=3):
        pass  # a TCP connection that never sends a query
    events = testnet.dns_queries(since=mark)
    assert [(e["event"], e["proto"]) for e in events] == [("query", "udp"), ("connect", "tcp")]
    assert events[0]["name"] == "" and events[0]["hex"] == b"not dns".hex()


# --- web servers --------------------------------------------------------------------------------


def test_http_and_https_answer_with_their_name_and_are_recorded(testnet):
    mark = testnet.mark()
    out = json.loads(testnet.run_client(ME + f"""
import ssl, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
res = {{}}
for url in ("http://allowed.test/a?b=1", "https://allowed.test/secure", "https://api.allowed.test/x",
            "http://other.test/", "http://{testnet.ips['allowed.test']}:8080/p8080",
            "https://{testnet.ips['allowed.test']}:8443/p8443"):
    r = urllib.request.urlopen(url, context=ctx, timeout=5)
    res[url] = [r.status, r.read().decode(), r.headers["X-Testnet-Host"]]
print(json.dumps({{"me": ME, "res": res}}))
"""))
    for url, (status, body, header) in out["res"].items():
        name = "other.test" if "other" in url else "allowed.test"
        assert (status, body, header) == (200, f"hello from {name}", name), url
    ip = testnet.ips["allowed.test"]
    hits = testnet.web_hits("allowed.test", since=mark)
    assert {h["src"] for h in hits} == {out["me"]}
    requests = [(h["port"], h["method"], h["path"], h["host"], h["sni"]) for h in hits if h["event"] == "request"]
    assert requests == [
        (80, "GET", "/a?b=1", "allowed.test", None), (443, "GET", "/secure", "allowed.test", "allowed.test"),
        (443, "GET", "/x", "api.allowed.test", "api.allowed.test"), (8080, "GET", "/p8080", f"{ip}:8080", None),
        (8443, "GET", "/p8443", f"{ip}:8443", None),  # no SNI for an IP address
    ]
    assert [h["port"] for h in hits if h["event"] == "connect"] == [80, 443, 443, 8080, 8443]
    assert [(h["port"], h["ok"]) for h in hits if h["event"] == "tls"] == [(443, True), (443, True), (8443, True)]
    assert [h["path"] for h in testnet.web_hits("other.test", since=mark) if h["event"] == "request"] == ["/"]
    assert testnet.web_hits("blocked.test", since=mark) == []


def test_bytes_path_serves_that_many_bytes_and_is_recorded(testnet):
    """`/bytes/N` is the benchmark's download; other paths still say hello."""
    mark = testnet.mark()
    out = json.loads(testnet.run_client("""
import json, ssl, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
res = {}
for url in ("http://allowed.test/bytes/3000000", "https://allowed.test/bytes/70000", "http://allowed.test/bytes/0",
            "http://allowed.test/bytes/x", "http://allowed.test/bytes/2147483648"):
    r = urllib.request.urlopen(url, context=ctx, timeout=10)
    body = r.read()
    res[url] = [r.status, len(body), body[:20].decode(), set(body) <= {0}, r.headers["Content-Length"]]
head = urllib.request.urlopen(urllib.request.Request("http://allowed.test/bytes/5", method="HEAD"), timeout=5)
res["HEAD"] = [head.status, len(head.read()), head.headers["Content-Length"]]
print(json.dumps(res))
"""))
    assert out["http://allowed.test/bytes/3000000"] == [200, 3000000, "\0" * 20, True, "3000000"]
    assert out["https://allowed.test/bytes/70000"] == [200, 70000, "\0" * 20, True, "70000"]
    assert out["http://allowed.test/bytes/0"] == [200, 0, "", True, "0"]
    assert out["http://allowed.test/bytes/x"][2] == "hello from allowed.t"
    assert out["http://allowed.test/bytes/2147483648"][2] == "hello from allowed.t"
    assert out["HEAD"] == [200, 0, "5"]
    paths = [h["path"] for h in testnet.web_hits("allowed.test", since=mark) if h["event"] == "request"]
    assert paths == ["/bytes/3000000", "/bytes/70000", "/bytes/0", "/bytes/x", "/bytes/2147483648", "/bytes/5"]


def test_sni_is_recorded_even_when_the_handshake_fails(testnet):
    """A ClientHello naming blocked.test sent to allowed.test's address is on
    record even if the client gives up mid-handshake."""
    mark = testnet.mark()
    ctx = ssl.create_default_context()  # verifies: the self-signed cert makes the client abort
    with socket.create_connection((testnet.ips["allowed.test"], 443), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="blocked.test")
    tls = [h for h in testnet.web_hits("allowed.test", since=mark) if h["event"] == "tls"]
    assert [(h["sni"], h["ok"]) for h in tls] == [("blocked.test", False)]


def test_certificates_cover_each_name_and_its_subdomains(testnet, tmp_path):
    for host, names in tf.WEB_HOSTS.items():
        pem = ssl.get_server_certificate((testnet.ips[host], 443))
        (tmp_path / f"{host}.pem").write_text(pem)
        ctx = ssl.create_default_context(cafile=str(tmp_path / f"{host}.pem"))
        for name in [n.replace("*", "sub") for n in names]:
            with socket.create_connection((testnet.ips[host], 443), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as t:
                    t.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
                    assert t.makefile("rb").read().endswith(f"hello from {host}".encode())
        with socket.create_connection((testnet.ips[host], 443), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname="elsewhere.test")


# --- canary ---------------------------------------------------------------------------------------


def test_canary_records_tcp_and_udp_from_a_container(testnet):
    mark = testnet.mark()
    out = json.loads(testnet.run_client(ME + """
res = {}
with socket.create_connection(("canary.test", 22), timeout=5) as s:
    s.sendall(b"SSH-2.0-probe\\r\\n"); res["tcp"] = s.recv(100).decode()
with socket.create_connection(("canary.test", 443), timeout=5) as s:
    s.sendall(b"\\x16\\x03\\x01"); res["tls"] = s.recv(100).decode()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(b"\\xc0quic", ("canary.test", 443)); res["udp"] = u.recv(100).decode()
print(json.dumps({"me": ME, "res": res}))
"""))
    assert out["res"] == {"tcp": "HTTP/1.0 200 OK\r\n\r\ncanary", "tls": "", "udp": "canary"}
    hits = [(h["event"], h["proto"], h["port"], h.get("hex")) for h in testnet.canary_hits(since=mark)]
    assert {h["src"] for h in testnet.canary_hits(since=mark)} == {out["me"]}
    assert sorted(hits, key=str) == sorted([
        ("connect", "tcp", 22, None), ("data", "tcp", 22, b"SSH-2.0-probe\r\n".hex()),
        ("connect", "tcp", 443, None), ("data", "tcp", 443, "160301"),
        ("datagram", "udp", 443, b"\xc0quic".hex()),
    ], key=str)


def test_canary_hears_every_port_the_attacks_use(testnet):
    canary = testnet.ips["canary.test"]
    mark = testnet.mark()
    for port in REQUIRED_TCP:
        with socket.create_connection((canary, port), timeout=3):
            pass
    for port in REQUIRED_UDP:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (canary, port))
    hits = testnet.canary_hits(since=mark)
    assert sorted(h["port"] for h in hits if h["event"] == "connect") == sorted(REQUIRED_TCP)
    assert sorted(h["port"] for h in hits if h["event"] == "datagram") == sorted(REQUIRED_UDP)


def test_silence_is_recorded_as_silence(testnet):
    """No traffic, no events: the judges never report noise as a leak."""
    mark = testnet.mark()
    assert testnet.dns_queries(since=mark) == []
    assert testnet.canary_hits(since=mark) == []
    for host in tf.WEB_HOSTS:
        assert testnet.web_hits(host, since=mark) == []


# --- the Docker host --------------------------------------------------------------------------------


def test_host_listener_hears_the_host_and_the_test_network(testnet, host_listener):
    """Without a sandbox, a container on the test network reaches the Docker
    host: so a silent listener in the attack suite means the sandbox held."""
    assert host_listener.host == testnet.gateway
    with socket.create_connection((host_listener.host, host_listener.port), timeout=3) as s:
        s.sendall(b"from-host")
    out = testnet.run_client(ME + f"""
with socket.create_connection(("{host_listener.host}", {host_listener.port}), timeout=5) as s:
    s.sendall(b"from-container")
print(ME)
""")
    time.sleep(0.5)  # the listener reads up to 0.5 s after accepting
    assert [(h["src"], bytes.fromhex(h["hex"])) for h in host_listener.hits] == [
        (testnet.gateway, b"from-host"), (out.strip(), b"from-container")]


# --- lifecycle ----------------------------------------------------------------------------------------


def _leftovers(client, name):
    label = {"label": f"{tf.RUN_LABEL}={name}"}
    return client.containers.list(all=True, filters=label) + client.networks.list(filters=label)


@pytest.fixture
def client():
    require_docker()
    return docker.from_env()


def test_a_testnet_leaves_nothing_behind(client, monkeypatch):
    name = tf._new_name()
    monkeypatch.setattr(tf, "_new_name", lambda: name)
    with tf.running_testnet(client) as net:
        assert net.network == name
        labels = [c.labels for c in client.containers.list(filters={"label": f"{tf.RUN_LABEL}={name}"})]
        assert len(labels) == 5 and all(lb.get(tf.LABEL) == "true" for lb in labels)
        assert client.networks.get(name).attrs["Internal"] is True
        assert client.networks.get(name).attrs["Labels"].get(tf.LABEL) == "true"
    assert _leftovers(client, name) == []


def test_a_setup_failing_half_way_leaves_nothing_behind(client, monkeypatch):
    name = tf._new_name()
    monkeypatch.setattr(tf, "_new_name", lambda: name)

    def broken(container, timeout=0):
        raise RuntimeError("simulated: a host never got ready")

    monkeypatch.setattr(tf, "_wait_ready", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        with tf.running_testnet(client):
            pass
    assert _leftovers(client, name) == []
