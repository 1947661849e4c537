"""The hosts of the test internet: `testnet.py dns|web|canary ...`.

They are the judges of the security tests: a test passes only when the attack
fails inside the kernel AND these hosts saw nothing. So every server writes one
JSON line to stdout for everything that reaches it -- at accept time, before
it reads a byte, so even a connection that sends nothing is on record -- and
the tests read those lines back with `docker logs`.

    dns    NAME=IP ...      authoritative DNS on UDP+TCP 53 (`*.NAME=IP` for wildcards;
                            `NAME=self`: the address the query arrived at)
    web    NAME[,ALIAS...]  HTTP on 80 and 8080, HTTPS on 443 and 8443 (self-signed, SAN = names);
                            every path answers `hello from NAME`, except GET/HEAD `/bytes/N`:
                            N zero bytes (N <= 1 GiB; the benchmark's downloads)
    canary                  many TCP and UDP ports; records and answers everything

Environment: TESTNET_BIND (default 0.0.0.0) is the address every socket binds
to, so several hosts can share one network namespace, each on its own address
(the test host beyond the Docker host, tests/integration/testnet_fixtures.py);
TESTNET_TLS_DIR (default /tmp/tls) is where a web host keeps its certificate.

Stdlib only, and no name lookups of its own: nothing here may cause traffic the
judges did not ask for.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import selectors
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time

_lock = threading.Lock()
BIND = os.environ.get("TESTNET_BIND", "0.0.0.0")
TLS_DIR = os.environ.get("TESTNET_TLS_DIR", "/tmp/tls")
SELF = "self"


def emit(**event) -> None:
    """One event, one JSON line, flushed at once (the tests read them live)."""
    event = {"t": round(time.time(), 3), **event}
    with _lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


# --- dns ------------------------------------------------------------------------------

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4


def lookup(table: dict[str, str], name: str) -> str | None:
    """Exact name first, then the closest `*.suffix` wildcard (matching any depth)."""
    if name in table:
        return table[name]
    labels = name.split(".")
    for i in range(1, len(labels)):
        ip = table.get("*." + ".".join(labels[i:]))
        if ip:
            return ip
    return None


def parse_question(msg: bytes) -> tuple[str, int, int]:
    """(lowercase name, qtype, offset after the question) of a query's first question."""
    labels, pos = [], 12
    while True:
        n = msg[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    (qtype,) = struct.unpack("!H", msg[pos:pos + 2])
    return ".".join(labels).lower(), qtype, pos + 4


def dns_answer(table: dict[str, str], msg: bytes, src: str, proto: str, me=None) -> bytes | None:
    """Record the query, then answer it: A for known names, NODATA for their other
    types, NXDOMAIN for the rest. Unparseable junk is recorded and dropped."""
    try:
        qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
        name, qtype, end = parse_question(msg)
    except (ValueError, IndexError, struct.error) as exc:
        emit(event="query", name="", qtype=None, src=src, proto=proto, error=str(exc), hex=msg[:64].hex())
        return None
    emit(event="query", name=name, qtype=QTYPES.get(qtype, qtype), src=src, proto=proto)
    ip = lookup(table, name)
    answers = b""
    if (flags >> 11) & 0xF != 0:
        rcode = NOTIMP
    elif qdcount != 1:
        rcode = FORMERR
    elif ip is None:
        rcode = NXDOMAIN
    else:
        rcode = NOERROR
        if qtype == 1:
            ip = me() if ip == SELF else ip
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip)
    out_flags = 0x8000 | 0x0400 | (flags & 0x7900) | rcode  # QR, AA, opcode and RD echoed
    header = struct.pack("!HHHHHH", qid, out_flags, 1, 1 if answers else 0, 0, 0)
    return header + msg[12:end] + answers


def serve_dns(entries: list[str]) -> None:
    table = {}
    for entry in entries:
        name, _, ip = entry.partition("=")
        if ip != SELF:
            socket.inet_aton(ip)  # fail loudly on a bad table
        table[name.lower().rstrip(".")] = ip
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((BIND, 53))
    tcp = listen_tcp(53)

    def my_address(peer: tuple[str, int]) -> str:
        """The address a query to 0.0.0.0 arrived at: the one the kernel would
        answer from (connect() on a UDP socket picks it and sends nothing)."""
        if BIND != "0.0.0.0":
            return BIND
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(peer)
            return probe.getsockname()[0]

    def tcp_client(conn: socket.socket, src: str) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    head = recv_exact(conn, 2)
                    if not head:
                        return
                    msg = recv_exact(conn, struct.unpack("!H", head)[0])
                    reply = dns_answer(table, msg, src, "tcp", lambda: conn.getsockname()[0])
                    if reply:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    emit(event="ready", role="dns", table=table)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ)
    sel.register(tcp, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is udp:
                msg, (src, port) = udp.recvfrom(4096)
                reply = dns_answer(table, msg, src, "udp", lambda: my_address((src, port)))
                if reply:
                    udp.sendto(reply, (src, port))
            else:
                conn, (src, _) = tcp.accept()
                emit(event="connect", name="", qtype=None, src=src, proto="tcp")
                threading.Thread(target=tcp_client, args=(conn, src), daemon=True).start()


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def listen_tcp(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((BIND, port))
    s.listen(64)
    return s


# --- web ------------------------------------------------------------------------------

def make_cert(names: list[str]) -> tuple[str, str]:
    """A fresh self-signed certificate whose SAN covers every name of this host."""
    os.makedirs(TLS_DIR, exist_ok=True)
    key, cert = os.path.join(TLS_DIR, "key.pem"), os.path.join(TLS_DIR, "cert.pem")
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "7", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


BYTES_PATH = re.compile(r"/bytes/([0-9]{1,10})")
MAX_BYTES = 1 << 30
CHUNK = b"\0" * (1 << 16)


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers every method on every path with `hello from <name>`; GET and
    HEAD of `/bytes/N` (N <= MAX_BYTES) with N zero bytes."""

    server_version = "testnet"
    timeout = 10  # a client that connects and sends nothing must not hold a thread forever

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        emit(event="request", name=self.server.name, port=self.server.port, src=self.client_address[0],
             method=self.command, path=self.path, host=self.headers.get("Host"),
             sni=getattr(self.connection, "sni", None), tls=self.server.tls)
        m = BYTES_PATH.fullmatch(self.path)
        if m and self.command in ("GET", "HEAD") and int(m.group(1)) <= MAX_BYTES:
            self.send_bytes(int(m.group(1)))
            return
        body = f"hello from {self.server.name}".encode()
        self.send_response(200)
        self.send_header("X-Testnet-Host", self.server.name)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_bytes(self, n: int) -> None:
        self.send_response(200)
        self.send_header("X-Testnet-Host", self.server.name)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        view = memoryview(CHUNK)
        while n > 0:
            k = min(n, len(view))
            self.wfile.write(view[:k])
            n -= k

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_CONNECT = answer

    def log_message(self, *args):  # stdout is for events only
        pass


class WebServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, port: int, ctx: ssl.SSLContext | None):
        self.name, self.port, self.ctx, self.tls = name, port, ctx, ctx is not None
        super().__init__((BIND, port), Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(): a DNS query nobody asked for.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.name, self.port

    def verify_request(self, request, client_address):
        # Runs in the accept loop: the connection is on record before anything is read.
        emit(event="connect", name=self.name, port=self.port, src=client_address[0], tls=self.tls)
        return True

    def finish_request(self, request, client_address):
        if self.ctx:
            request.settimeout(10)
            request = self.ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                emit(event="tls", name=self.name, port=self.port, src=client_address[0],
                     sni=getattr(request, "sni", None), ok=False, error=str(exc)[:200])
                request.close()
                return
            emit(event="tls", name=self.name, port=self.port, src=client_address[0],
                 sni=getattr(request, "sni", None), ok=True)
            try:
                super().finish_request(request, client_address)
            finally:  # wrap_socket detached the raw socket socketserver will "close"
                self.shutdown_request(request)
            return
        super().finish_request(request, client_address)


def remember_sni(tls_socket, server_name, _ctx):
    """sni_callback: keep the name the client asked for, even if the handshake then fails."""
    tls_socket.sni = server_name


def serve_web(names: list[str]) -> None:
    cert, key = make_cert(names)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = remember_sni
    servers = [WebServer(names[0], 80, None), WebServer(names[0], 8080, None),
               WebServer(names[0], 443, ctx), WebServer(names[0], 8443, ctx)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    emit(event="ready", role="web", name=names[0], names=names)
    threading.Event().wait()


# --- canary ---------------------------------------------------------------------------

CANARY_TCP = [21, 22, 23, 25, 53, 80, 110, 143, 443, 445, 853, 1080, 2375, 2376, 3128, 3306, 5353,
              5432, 6379, 8000, 8080, 8443, 8888, 9050, 9999, 50000]
CANARY_UDP = [53, 67, 123, 137, 443, 500, 853, 1900, 4500, 5353, 9999, 51820]
TLS_PORTS = {443, 853, 2376, 8443}


def canary_tcp(conn: socket.socket, src: str, port: int) -> None:
    """Read a little, record it, answer like a web server (TLS ports: just close)."""
    conn.settimeout(2)
    with conn:
        try:
            data = conn.recv(512)
        except OSError:
            data = b""
        emit(event="data", proto="tcp", port=port, src=src, hex=data[:256].hex())
        if port not in TLS_PORTS:
            try:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\ncanary")
            except OSError:
                pass


def serve_canary() -> None:
    sel = selectors.DefaultSelector()
    for port in CANARY_TCP:
        sel.register(listen_tcp(port), selectors.EVENT_READ, ("tcp", port))
    for port in CANARY_UDP:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((BIND, port))
        sel.register(s, selectors.EVENT_READ, ("udp", port))
    emit(event="ready", role="canary", tcp=CANARY_TCP, udp=CANARY_UDP)
    while True:
        for key, _ in sel.select():
            proto, port = key.data
            if proto == "tcp":
                conn, (src, _) = key.fileobj.accept()
                emit(event="connect", proto="tcp", port=port, src=src)
                threading.Thread(target=canary_tcp, args=(conn, src, port), daemon=True).start()
            else:
                data, (src, sport) = key.fileobj.recvfrom(65535)
                emit(event="datagram", proto="udp", port=port, src=src, hex=data[:256].hex())
                key.fileobj.sendto(b"canary", (src, sport))


def main(argv: list[str]) -> None:
    role, args = (argv[0], argv[1:]) if argv else ("--help", [])
    if role == "dns":
        serve_dns(args)
    elif role == "web":
        serve_web([n for a in args for n in a.split(",") if n])
    elif role == "canary":
        serve_canary()
    else:
        print(__doc__)
        sys.exit(0 if role in ("--help", "-h") else 2)


if __name__ == "__main__":
    main(sys.argv[1:])
