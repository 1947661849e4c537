"""The beyond host judged without any sandbox: what reaches it is recorded.

`beyond_host` stands for the internet as real users' kernels reach it: a
container on Docker's default `bridge`, the host's routing and masquerading,
a veth out of the machine's namespace. Silence in its logs is evidence only if
plain containers on that path demonstrably reach it and get recorded, so
these checks use throwaway containers on `bridge` (as a sandbox pod would be)
and the Docker host itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import docker
import pytest

from tests.conftest import require_docker
from tests.integration import testnet_fixtures as tf
from tests.testnet.test_testnet_selfcheck import REQUIRED_TCP, REQUIRED_UDP, dns_query

ME = "import json, socket\n"
NAMES = ["allowed.test", "api.allowed.test", "a.b.allowed.test", "blocked.test", "x.blocked.test",
         "other.test", "canary.test"]


def test_addresses_are_for_testing_and_each_host_has_its_own(beyond_host):
    import ipaddress

    net = ipaddress.ip_network(beyond_host.subnet)
    assert net.subnet_of(tf.BEYOND_SUPERNET) and net.prefixlen == tf.BEYOND_PREFIX
    addrs = [beyond_host.gateway, beyond_host.dns_ip, *beyond_host.ips.values()]
    assert len(set(addrs)) == 6 and all(ipaddress.ip_address(a) in net for a in addrs)
    assert beyond_host.link.startswith("awft") and beyond_host.netns.startswith("awft-")
    assert beyond_host.network == "bridge"


def test_names_resolve_from_the_default_bridge_and_every_query_is_recorded(beyond_host):
    mark = beyond_host.mark()
    out = json.loads(beyond_host.run_client(ME + f"""
names = {NAMES + list(beyond_host.inside)!r}
print(json.dumps({{n: socket.gethostbyname(n) for n in names}}))
"""))
    ips = beyond_host.ips
    assert out == {
        "allowed.test": ips["allowed.test"], "api.allowed.test": ips["allowed.test"],
        "a.b.allowed.test": ips["allowed.test"], "blocked.test": ips["blocked.test"],
        "x.blocked.test": ips["blocked.test"], "other.test": ips["other.test"], "canary.test": ips["canary.test"],
        # allowed names pointing inside: exact names win over *.allowed.test
        "inside.allowed.test": ips["canary.test"], "gateway.allowed.test": beyond_host.gateway,
        "dns.allowed.test": beyond_host.dns_ip, "loopback.allowed.test": "127.0.0.1",
        "metadata.allowed.test": tf.METADATA_IP,
    }
    queries = beyond_host.dns_queries(since=mark)
    # Docker masquerades the default bridge: the beyond host sees the Docker host.
    assert {q["src"] for q in queries} == {beyond_host.gateway}
    assert {(q["name"], q["qtype"], q["proto"]) for q in queries} >= {(n, "A", "udp") for n in out}


def test_dns_protocol_details_from_the_host(beyond_host):
    dns, ips = beyond_host.dns_ip, beyond_host.ips
    mark = beyond_host.mark()
    assert dns_query(dns, "Allowed.TEST") == {"rcode": 0, "aa": True, "id_ok": True, "ancount": 1,
                                              "a": [ips["allowed.test"]]}
    assert dns_query(dns, "allowed.test", qtype=28)["ancount"] == 0
    assert dns_query(dns, "x.other.test")["rcode"] == 3
    assert dns_query(dns, "dns.allowed.test", tcp=True)["a"] == [dns]
    assert dns_query(dns, "canary.test", tcp=True)["a"] == [ips["canary.test"]]
    seen = [(q["event"], q["name"], q["proto"], q["src"]) for q in beyond_host.dns_queries(since=mark)]
    gw = beyond_host.gateway
    assert seen == [("query", "allowed.test", "udp", gw), ("query", "allowed.test", "udp", gw),
                    ("query", "x.other.test", "udp", gw), ("connect", "", "tcp", gw),
                    ("query", "dns.allowed.test", "tcp", gw), ("connect", "", "tcp", gw),
                    ("query", "canary.test", "tcp", gw)]


def test_http_and_https_by_name_from_the_default_bridge(beyond_host):
    mark = beyond_host.mark()
    out = json.loads(beyond_host.run_client(ME + """
import ssl, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
res = {}
for url in ("http://allowed.test/plain", "https://allowed.test/secure", "https://api.allowed.test/x",
            "http://other.test/", "https://blocked.test/b"):
    r = urllib.request.urlopen(url, context=ctx, timeout=5)
    res[url] = [r.status, r.read().decode(), r.headers["X-Testnet-Host"]]
print(json.dumps(res))
"""))
    for url, (status, body, header) in out.items():
        name = next(h for h in tf.WEB_HOSTS if f"{h}/" in url)
        assert (status, body, header) == (200, f"hello from {name}", name), url
    hits = beyond_host.web_hits("allowed.test", since=mark)
    assert {h["src"] for h in hits} == {beyond_host.gateway}
    assert [(h["port"], h["path"], h["host"], h["sni"]) for h in hits if h["event"] == "request"] == [
        (80, "/plain", "allowed.test", None), (443, "/secure", "allowed.test", "allowed.test"),
        (443, "/x", "api.allowed.test", "api.allowed.test")]
    assert [(h["port"], h["ok"]) for h in hits if h["event"] == "tls"] == [(443, True), (443, True)]
    assert [h["path"] for h in beyond_host.web_hits("other.test", since=mark) if h["event"] == "request"] == ["/"]
    blocked = beyond_host.web_hits("blocked.test", since=mark)
    assert [(h["path"], h["sni"]) for h in blocked if h["event"] == "request"] == [("/b", "blocked.test")]
    assert beyond_host.canary_hits(since=mark) == []


def test_canary_records_tcp_and_udp_from_the_default_bridge(beyond_host):
    mark = beyond_host.mark()
    out = json.loads(beyond_host.run_client(ME + """
res = {}
with socket.create_connection(("canary.test", 22), timeout=5) as s:
    s.sendall(b"SSH-2.0-probe\\r\\n"); res["tcp"] = s.recv(100).decode()
with socket.create_connection(("inside.allowed.test", 3306), timeout=5) as s:
    s.sendall(b"inside"); res["inside"] = s.recv(100).decode()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(b"\\xc0quic", ("canary.test", 443)); res["udp"] = u.recv(100).decode()
print(json.dumps(res))
"""))
    assert out == {"tcp": "HTTP/1.0 200 OK\r\n\r\ncanary", "inside": "HTTP/1.0 200 OK\r\n\r\ncanary",
                   "udp": "canary"}
    hits = beyond_host.canary_hits(since=mark)
    assert {h["src"] for h in hits} == {beyond_host.gateway}
    assert sorted((h["event"], h["port"], h.get("hex")) for h in hits if h["event"] != "connect") == sorted([
        ("data", 22, b"SSH-2.0-probe\r\n".hex()), ("data", 3306, b"inside".hex()),
        ("datagram", 443, b"\xc0quic".hex())])


def test_canary_hears_every_port_the_attacks_use(beyond_host):
    canary = beyond_host.ips["canary.test"]
    mark = beyond_host.mark()
    for port in REQUIRED_TCP:
        with socket.create_connection((canary, port), timeout=3):
            pass
    for port in REQUIRED_UDP:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (canary, port))
    hits = beyond_host.canary_hits(since=mark)
    assert sorted(h["port"] for h in hits if h["event"] == "connect") == sorted(REQUIRED_TCP)
    assert sorted(h["port"] for h in hits if h["event"] == "datagram") == sorted(REQUIRED_UDP)


def test_silence_is_recorded_as_silence(beyond_host):
    mark = beyond_host.mark()
    assert beyond_host.dns_queries(since=mark) == []
    assert beyond_host.canary_hits(since=mark) == []
    for host in tf.WEB_HOSTS:
        assert beyond_host.web_hits(host, since=mark) == []


def test_listener_on_the_host_side_hears_the_default_bridge(beyond_host, beyond_listener):
    """gateway.allowed.test is reachable from a plain container on `bridge`: so
    a silent listener in a sandbox test means the sandbox held."""
    assert beyond_listener.host == beyond_host.gateway
    out = beyond_host.run_client(ME + f"""
with socket.create_connection(("gateway.allowed.test", {beyond_listener.port}), timeout=5) as s:
    s.sendall(b"from-bridge")
print(socket.gethostbyname(socket.gethostname()))
""")
    time.sleep(0.5)  # the listener reads up to 0.5 s after accepting
    # To the host's own address, so no masquerading: the container's own address.
    assert [(h["src"], bytes.fromhex(h["hex"])) for h in beyond_listener.hits] == [(out.strip(), b"from-bridge")]


def test_guard_counts_and_drops_what_a_container_sends(beyond_host):
    """The counting rule metadata_guard puts on 169.254.0.0/16, shown on an
    address of our own (nothing is ever sent towards the metadata address)."""
    target = beyond_host.ips["blocked.test"]
    mark = beyond_host.mark()
    with tf.guarding(f"{target}/32") as guard:
        assert guard.packets() == 0
        out = beyond_host.run_client(ME + f"""
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("{target}", 80)); print("connected")
except OSError as e:
    print(type(e).__name__)
""")
        assert out.strip() in ("timeout", "TimeoutError")
        assert guard.packets() >= 1
    assert beyond_host.web_hits("blocked.test", since=mark) == []
    assert guard.comment not in subprocess.run(["iptables", "-t", "raw", "-S"], capture_output=True,
                                               text=True).stdout


# --- lifecycle --------------------------------------------------------------------------------------


@pytest.fixture
def client():
    require_docker()
    tf.require_netns()
    return docker.from_env()


def _traces(token: str) -> dict:
    netns, link = tf.NETNS_PREFIX + token, tf.LINK_PREFIX + token
    return {"netns": netns in tf._netns_names(), "link": link in tf._links(),
            "logdir": tf._logdir(token).exists()}


def test_a_beyond_host_leaves_nothing_behind(client, monkeypatch):
    token = "0000beef"
    monkeypatch.setattr(tf, "_new_token", lambda: token)
    with tf.running_beyond_host(client) as host:
        assert _traces(token) == {"netns": True, "link": True, "logdir": True}
        pids = tf._netns_pids(host.netns)
        assert len(pids) >= 5
    assert _traces(token) == {"netns": False, "link": False, "logdir": False}
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]


def test_a_setup_failing_half_way_leaves_nothing_behind(client, monkeypatch):
    token = "0000dead"
    monkeypatch.setattr(tf, "_new_token", lambda: token)

    def broken(proc, log, key, timeout=0):
        raise RuntimeError("simulated: a server never got ready")

    monkeypatch.setattr(tf, "_wait_ready_file", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        with tf.running_beyond_host(client):
            pass
    assert _traces(token) == {"netns": False, "link": False, "logdir": False}


def test_leftovers_of_a_dead_run_are_removed_and_a_live_runs_are_not(client):
    """A crashed session's namespace, veth and server are cleaned at the next
    start; another session's (its owner still runs) are left alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    made = {}
    try:
        for token, tag in (("0000d1ed", f"{tf.OWNER_TAG} pid={dead.pid} start=1"),
                           ("0000a11e", tf.owner_tag())):
            netns, link = tf.NETNS_PREFIX + token, tf.LINK_PREFIX + token
            made[token] = (netns, link)
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns],
                           check=True)
            subprocess.run(["ip", "link", "set", link, "alias", tag], check=True)
            tf._logdir(token).mkdir()
        sleeper = subprocess.Popen(["ip", "netns", "exec", made["0000d1ed"][0], "sleep", "600"])
        removed = tf.clean_stale_beyond_hosts(client)
        assert tf.NETNS_PREFIX + "0000d1ed" in removed and tf.NETNS_PREFIX + "0000a11e" not in removed
        assert sleeper.wait(timeout=10) == -9  # the dead run's process went with its namespace
        assert _traces("0000d1ed") == {"netns": False, "link": False, "logdir": False}
        assert _traces("0000a11e") == {"netns": True, "link": True, "logdir": True}
    finally:
        for token, (netns, link) in made.items():
            tf.remove_beyond_host(netns, link, tf._logdir(token))
