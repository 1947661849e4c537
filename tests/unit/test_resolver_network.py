"""The pod's resolver, run in-process with its real UDP and TCP listeners,
against a fake upstream DNS server on 127.0.0.1 (random port). Only loopback
traffic: no real resolver is ever asked."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import signal
import sys
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awf_kernel.policy import Policy, parse_domains
from awf_kernel.render.resolver import render_resolver_config

from .test_resolver import RESOLVER, resolver

REAL = "93.184.216.34"     # documentation-free public address; data only, never contacted
FORGED = "6.6.6.6"


class FakeUpstream:
    """UDP+TCP DNS server. `handler(query, proto)` returns a list of
    (delay seconds, wire bytes) to send back; every packet received is kept."""

    def __init__(self, handler=None):
        self.handler = handler or (lambda q, proto: [(0, answer(q, REAL))])
        self.udp, self.tcp = resolver.bind_pair("127.0.0.1", 0)
        self.port = self.udp.getsockname()[1]
        self.received: list[tuple[str, bytes]] = []
        self.peers: list[tuple[str, int]] = []
        self.seen = threading.Event()
        self.stopping = threading.Event()
        for target in (self._udp, self._tcp):
            threading.Thread(target=target, daemon=True).start()

    def _udp(self):
        self.udp.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                continue
            self.received.append(("udp", data))
            self.peers.append(peer)
            self.seen.set()
            threading.Thread(target=self._reply_udp, args=(data, peer), daemon=True).start()

    def _reply_udp(self, data, peer):
        for delay, wire in self.handler(dns.message.from_wire(data), "udp"):
            time.sleep(delay)
            self.udp.sendto(wire, peer)

    def _tcp(self):
        self.tcp.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(3)
                data = read_framed(conn)
                self.received.append(("tcp", data))
                for delay, wire in self.handler(dns.message.from_wire(data), "tcp"):
                    time.sleep(delay)
                    conn.sendall(len(wire).to_bytes(2, "big") + wire)

    def queries(self):
        return [(proto, dns.message.from_wire(data)) for proto, data in self.received]

    def close(self):
        self.stopping.set()
        time.sleep(0.15)
        self.udp.close()
        self.tcp.close()


def read_framed(conn) -> bytes:
    return resolver.recv_exact(conn, int.from_bytes(resolver.recv_exact(conn, 2, time.monotonic() + 3), "big"),
                               time.monotonic() + 3)


def answer(query, *addresses, name=None, tc=False) -> bytes:
    reply = dns.message.make_response(query)
    qname = name or query.question[0].name
    if addresses:
        reply.answer.append(dns.rrset.from_text(qname, 60, "IN", "A", *addresses))
    if tc:
        reply.flags |= dns.flags.TC
        reply.answer = []
    return reply.to_wire()


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """start(handler, **config) -> (server address, upstream, log path)."""
    monkeypatch.setattr(resolver, "UPSTREAM_TIMEOUT", 1.0)
    started = []

    def start(handler=None, allowed_private=(), **extra):
        upstream = FakeUpstream(handler)
        policy = Policy(allow=parse_domains([".allowed.test"], "t"))
        config = json.loads(render_resolver_config(policy, kernel_id="k", upstreams=["127.0.0.1"],
                                                   allowed_private=allowed_private))
        log = tmp_path / "dns.jsonl"
        config.update(upstream_port=upstream.port, log=str(log), **extra)
        server = resolver.Server(resolver.Resolver(config), "127.0.0.1", 0).start()
        started.append((server, upstream))
        return server.address, upstream, log

    yield start
    for server, upstream in started:
        server.stop()
        upstream.close()


def ask_udp(address, name, qtype="A", ident=0x1234, timeout=5.0, **kw):
    query = dns.message.make_query(name, qtype, **kw)
    query.id = ident
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query.to_wire(), address)
        return dns.message.from_wire(sock.recv(65535))


def ask_tcp(address, name, qtype="A", ident=0x4321):
    query = dns.message.make_query(name, qtype)
    query.id = ident
    with socket.create_connection(address, timeout=5) as conn:
        wire = query.to_wire()
        conn.sendall(len(wire).to_bytes(2, "big") + wire)
        return dns.message.from_wire(read_framed(conn))


def addresses(reply) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == 1 for rd in rrset)


def test_allowed_name_is_forwarded_and_answered(pod):
    address, upstream, log = pod()
    reply = ask_udp(address, "www.allowed.test")
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.NOERROR and addresses(reply) == [REAL]
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["host"] == "www.allowed.test" and entry["decision"] == "allowed"
    assert entry["answers"] == [REAL] and entry["proto"] == "udp"


def test_upstream_gets_a_new_query_with_only_the_validated_question(pod):
    address, upstream, _ = pod()
    ids = set()
    for ident in (0x1234, 0x1234, 0x1234, 0x1234):
        reply = ask_udp(address, "WwW.AllOwed.TeSt", ident=ident, use_edns=0, payload=4096,
                        options=[dns.edns.GenericOption(10, b"\x01" * 8)])  # a client cookie
        assert reply.id == ident and str(reply.question[0].name) == "WwW.AllOwed.TeSt."
    for proto, query in upstream.queries():
        ids.add(query.id)
        assert proto == "udp" and query.flags & dns.flags.RD and not query.flags & dns.flags.QR
        assert [(str(q.name), q.rdtype, q.rdclass) for q in query.question] == [("www.allowed.test.", 1, 1)]
        assert query.answer == [] and query.authority == [] and query.additional == []
        assert query.edns == 0 and not query.options and query.payload == resolver.UPSTREAM_PAYLOAD
    assert len(upstream.received) == 4 and ids != {0x1234}
    raw = [data for _, data in upstream.received]
    assert all(b"\x01" * 8 not in data and b"WwW" not in data for data in raw)


def test_denied_name_never_reaches_upstream(pod):
    address, upstream, log = pod()
    reply = ask_udp(address, "secret-data.exfil.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.id == 0x1234
    reply = ask_tcp(address, "secret-data.exfil.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    time.sleep(0.2)
    assert upstream.received == []
    assert [json.loads(line)["reason"] for line in log.read_text().splitlines()] == ["not-allowed"] * 2


def _connected_udp_ports(remote_port: int) -> list[int]:
    """Local ports of UDP sockets connected to 127.0.0.1:remote_port, read as
    the kernel in a pod would: from /proc/net/udp."""
    ports = []
    for line in pathlib.Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if remote == f"0100007F:{remote_port:04X}":
            ports.append(int(local.split(":")[1], 16))
    return ports


def test_forged_reply_from_another_local_socket_is_not_accepted(pod):
    """The attack: read the resolver's upstream port from /proc/net/udp and
    race the real answer with a forged one from 127.0.0.1 that has the right
    id and question. The connected socket drops it; the client gets the real answer."""
    address, upstream, _ = pod(handler=lambda q, proto: [(0.6, answer(q, REAL))])
    result = {}
    client = threading.Thread(target=lambda: result.update(reply=ask_udp(address, "www.allowed.test")))
    client.start()
    assert upstream.seen.wait(3)
    real_query = upstream.queries()[0][1]
    port = upstream.peers[0][1]  # the resolver's upstream socket, as the fake upstream sees it
    listed = _connected_udp_ports(upstream.port)
    forged = answer(real_query, FORGED)  # right id, right question: only the source differs
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        for _ in range(20):
            attacker.sendto(forged, ("127.0.0.1", port))
    client.join(5)
    assert addresses(result["reply"]) == [REAL]
    assert port in listed  # /proc/net/udp showed it, connected to the upstream


def test_forged_reply_would_be_accepted_by_an_unconnected_socket():
    """The control for the test above: the same injection reaches an
    unconnected socket, which is what the resolver used to have."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        victim.bind(("127.0.0.1", 0))
        victim.settimeout(2)
        attacker.sendto(b"forged", victim.getsockname())
        assert victim.recv(100) == b"forged"


def test_replies_with_wrong_question_or_id_are_ignored(pod):
    def handler(q, proto):
        wrong_name = dns.message.make_query("evil.test", "A")
        wrong_name.id = q.id
        wrong_type = dns.message.make_query(q.question[0].name, "TXT")
        wrong_type.id = q.id
        wrong_id = dns.message.from_wire(answer(q, FORGED))
        wrong_id.id = (q.id + 1) % 65536
        not_response = dns.message.from_wire(answer(q, FORGED))
        not_response.flags &= ~dns.flags.QR
        empty_refused = dns.message.Message(id=q.id)
        empty_refused.flags = dns.flags.QR
        empty_refused.set_rcode(dns.rcode.REFUSED)
        bad = [answer(wrong_name, FORGED), answer(wrong_type, FORGED), wrong_id.to_wire(),
               not_response.to_wire(), empty_refused.to_wire(), b"\x00\x01garbage", q.to_wire()]
        return [(0, wire) for wire in bad] + [(0.1, answer(q, REAL))]

    address, upstream, _ = pod(handler=handler)
    assert addresses(ask_udp(address, "www.allowed.test")) == [REAL]


def test_only_wrong_replies_mean_servfail(pod):
    def handler(q, proto):
        wrong = dns.message.make_query("evil.test", "A")
        wrong.id = q.id
        return [(0, answer(wrong, FORGED))]

    address, upstream, log = pod(handler=handler)
    reply = ask_udp(address, "www.allowed.test")
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.answer == []
    assert json.loads(log.read_text().splitlines()[-1])["reason"] == "upstream-failed"


def test_truncated_reply_is_retried_over_tcp(pod):
    def handler(q, proto):
        return [(0, answer(q, REAL, tc=proto == "udp"))]

    address, upstream, _ = pod(handler=handler)
    assert addresses(ask_udp(address, "www.allowed.test")) == [REAL]
    protos = [proto for proto, _ in upstream.queries()]
    assert protos == ["udp", "tcp"]
    udp_q, tcp_q = (q for _, q in upstream.queries())
    assert tcp_q.question == udp_q.question


def test_tcp_queries_are_served(pod):
    address, upstream, log = pod()
    reply = ask_tcp(address, "api.allowed.test")
    assert reply.id == 0x4321 and addresses(reply) == [REAL]
    assert json.loads(log.read_text().splitlines()[-1])["proto"] == "tcp"
    # several queries on one connection
    with socket.create_connection(address, timeout=5) as conn:
        for ident in (1, 2, 3):
            query = dns.message.make_query("api.allowed.test", "A")
            query.id = ident
            wire = query.to_wire()
            conn.sendall(len(wire).to_bytes(2, "big") + wire)
            assert dns.message.from_wire(read_framed(conn)).id == ident


def _closed(conn) -> bool:
    try:
        return conn.recv(10) == b""
    except ConnectionResetError:
        return True


def test_slow_or_hostile_tcp_clients_do_not_block_udp(pod, monkeypatch):
    monkeypatch.setattr(resolver, "TCP_TIMEOUT", 1.0)
    address, upstream, _ = pod()
    oversized = socket.create_connection(address, timeout=5)
    oversized.sendall((resolver.TCP_MAX_QUERY + 1).to_bytes(2, "big") + b"x" * 100)
    oversized.settimeout(3)
    assert _closed(oversized)  # nothing read past the cap
    hogs = []
    for _ in range(resolver.TCP_MAX_CONNECTIONS + 4):
        conn = socket.create_connection(address, timeout=5)
        conn.sendall(b"\x00")  # half a length prefix, then nothing
        hogs.append(conn)
    started = time.monotonic()
    assert addresses(ask_udp(address, "www.allowed.test", timeout=2)) == [REAL]
    assert time.monotonic() - started < 0.5
    for conn in hogs:
        conn.settimeout(3)
        assert _closed(conn)  # cut off by the deadline, or refused past the cap
        conn.close()
    oversized.close()
    assert addresses(ask_tcp(address, "www.allowed.test")) == [REAL]  # slots are free again


def test_private_a_records_are_dropped_unless_allowed(pod):
    def handler(q, proto):
        name = str(q.question[0].name)
        if name.startswith("mixed."):
            return [(0, answer(q, "10.1.2.3", REAL, "127.0.0.1", "169.254.169.254"))]
        return [(0, answer(q, "10.1.2.3"))]

    address, _, log = pod(handler=handler)
    assert addresses(ask_udp(address, "mixed.allowed.test")) == [REAL]
    reply = ask_udp(address, "intranet.allowed.test")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["reason"] == "private-address" and entry["dropped"] == ["10.1.2.3"]

    address, _, _ = pod(handler=handler, allowed_private=["10.1.0.0/16"])
    assert addresses(ask_udp(address, "mixed.allowed.test")) == ["10.1.2.3", REAL]
    assert addresses(ask_udp(address, "intranet.allowed.test")) == ["10.1.2.3"]


def test_sockets_do_not_allow_port_sharing(pod):
    address, _, _ = pod()
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for host in ("127.0.0.1", "0.0.0.0"):
                with pytest.raises(OSError):
                    thief.bind((host, address[1]))


def test_random_packets_never_crash_the_server_or_reach_upstream(pod):
    address, upstream, _ = pod()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(packets=st.lists(st.binary(max_size=300), min_size=1, max_size=5))
    def throw(packets):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in packets:
                sock.sendto(packet, address)
        for packet in packets:
            with socket.create_connection(address, timeout=5) as conn:
                try:
                    conn.sendall(len(packet).to_bytes(2, "big") + packet)
                    conn.recv(65535)
                except OSError:
                    pass  # the server may hang up on garbage

    throw()
    assert upstream.received == []
    assert addresses(ask_udp(address, "www.allowed.test")) == [REAL]  # still serving


def test_server_still_answers_after_garbage(pod):
    address, upstream, _ = pod()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in (b"", b"\xff" * 3, os.urandom(40), b"\x00" * 512):
            sock.sendto(packet, address)
    assert addresses(ask_udp(address, "www.allowed.test")) == [REAL]
    assert len(upstream.received) == 1


def test_resolver_script_listens_on_udp_and_tcp_before_saying_so(tmp_path):
    """The module as the proxy image runs it: `python3 resolver.py config.json`."""
    upstream = FakeUpstream()
    config = json.loads(render_resolver_config(Policy(allow=parse_domains([".allowed.test"], "t")),
                                               kernel_id="k", upstreams=["127.0.0.1"]))
    config.update(port=0, upstream_port=upstream.port, log=str(tmp_path / "dns.jsonl"),
                  generation_file=str(tmp_path / "generation"), generation="g1")
    (tmp_path / "resolver.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, str(RESOLVER), str(tmp_path / "resolver.json")],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "[awf-dns] listening on 127.0.0.1:" in line, line
        assert (tmp_path / "generation").read_text() == "g1"
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert addresses(ask_udp(("127.0.0.1", port), "www.allowed.test")) == [REAL]
        assert addresses(ask_tcp(("127.0.0.1", port), "www.allowed.test")) == [REAL]
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stderr.close()
        upstream.close()


def test_resolver_takes_a_new_policy_on_sighup_without_letting_go_of_its_port(tmp_path):
    """Live policy: SIGHUP swaps the deciding state; the sockets stay bound
    (the port is never free for the kernel), and the new generation is
    announced only once the new policy answers. A config that does not load
    keeps the old policy and announces nothing."""
    upstream = FakeUpstream()
    path, gen = tmp_path / "resolver.json", tmp_path / "generation"

    def write(domains, generation):
        config = json.loads(render_resolver_config(Policy(allow=parse_domains(domains, "t")),
                                                   kernel_id="k", upstreams=["127.0.0.1"]))
        config.update(port=0, upstream_port=upstream.port, log=str(tmp_path / "dns.jsonl"),
                      generation_file=str(gen), generation=generation)
        path.write_text(json.dumps(config))

    def wait_for(generation):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if gen.exists() and gen.read_text() == generation:
                return True
            time.sleep(0.02)
        return False

    write([".allowed.test"], "g1")
    proc = subprocess.Popen([sys.executable, str(RESOLVER), str(path)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert addresses(ask_udp(("127.0.0.1", port), "www.allowed.test")) == [REAL]
        write(["other.test"], "g2")
        proc.send_signal(signal.SIGHUP)
        assert wait_for("g2")
        assert addresses(ask_udp(("127.0.0.1", port), "www.allowed.test")) == []  # narrowed
        assert addresses(ask_tcp(("127.0.0.1", port), "other.test")) == [REAL]    # widened
        path.write_text("{not json")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert gen.read_text() == "g2" and proc.poll() is None
        assert addresses(ask_udp(("127.0.0.1", port), "other.test")) == [REAL]  # the old policy stays
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stderr.close()
        upstream.close()
