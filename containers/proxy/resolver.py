"""[awf-dns] The pod's filtering resolver.

Answers only names the policy allows, by forwarding the query unchanged to the
configured upstream resolvers; every other name gets NXDOMAIN from here, so no
query for a name outside the policy ever leaves the pod (DNS exfiltration
through a resolver chain is the classic hole in egress filters).

Stdlib only: the proxy image carries no pip packages. The matching mirrors
awf_kernel.policy (tests check they agree); it is repeated here because this
file runs inside the proxy container, where the package is not installed.
"""

import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time

ROTATE_BYTES = 10 * 1024 * 1024
KEEP_ROTATED = 5
NXDOMAIN = 3
REFUSED = 5
FORMERR = 1


def matches(rules, name):
    for host in rules.get("exact", ()):
        if name == host:
            return host
    for host in rules.get("subdomains", ()):
        if name.endswith("." + host):
            return "*." + host
    for host in rules.get("both", ()):
        if name == host or name.endswith("." + host):
            return "." + host
    return None


def decide(config, name):
    """Return (allowed, reason, rule) for a normalized query name."""
    rule = matches(config["block"], name)
    if rule:
        return False, "blocked", rule
    if config.get("allow_all"):
        return True, "allowed", "*"
    rule = matches(config["allow"], name)
    if rule:
        return True, "allowed", rule
    return False, "not-allowed", None


def parse_question(packet):
    """Return (qname, qtype, end offset) of the single question, or None."""
    if len(packet) < 12:
        return None
    qdcount = struct.unpack("!H", packet[4:6])[0]
    if qdcount != 1:
        return None
    labels, pos = [], 12
    while True:
        if pos >= len(packet):
            return None
        length = packet[pos]
        if length & 0xC0:  # no compression pointers in a question we accept
            return None
        pos += 1
        if length == 0:
            break
        label = packet[pos:pos + length]
        if len(label) != length:
            return None
        labels.append(label)
        pos += length
    if pos + 4 > len(packet):
        return None
    qtype = struct.unpack("!H", packet[pos:pos + 2])[0]
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    return name, qtype, pos + 4


def error_reply(packet, rcode, question_end):
    """A reply carrying only the question, with the query's id and RD bit."""
    ident = packet[:2]
    rd = packet[2] & 0x01
    flags = struct.pack("!BB", 0x80 | rd, 0x80 | rcode)
    qd = 1 if question_end else 0
    header = ident + flags + struct.pack("!HHHH", qd, 0, 0, 0)
    return header + (packet[12:question_end] if question_end else b"")


class Resolver:
    def __init__(self, config):
        self.config = config
        self.upstreams = config.get("upstreams") or read_resolv_conf()
        self.log_lock = threading.Lock()
        self.log_path = config.get("log")
        self.log_file = open(self.log_path, "a", buffering=1) if self.log_path else None

    def answer(self, packet, client):
        question = parse_question(packet)
        if question is None:
            return error_reply(packet, FORMERR, 0) if len(packet) >= 12 else None
        name, qtype, end = question
        allowed, reason, rule = decide(self.config, name.rstrip("."))
        reply = self.forward(packet) if allowed else None
        if allowed and reply is None:
            reason = "upstream-failed"
            reply = error_reply(packet, 2, end)  # SERVFAIL
        elif not allowed:
            reply = error_reply(packet, NXDOMAIN, end)
        self.record(name, qtype, allowed, reason, rule, client)
        return reply

    def forward(self, packet):
        for server in self.upstreams:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2.0)
                try:
                    sock.sendto(packet, (server, 53))
                    while True:
                        data, _ = sock.recvfrom(65535)
                        if data[:2] == packet[:2]:
                            return data
                except OSError:
                    continue
        return None

    def record(self, name, qtype, allowed, reason, rule, client):
        if self.log_file is None:
            return
        entry = {
            "time": round(time.time(), 3),
            "kind": "dns",
            "kernel_id": self.config.get("kernel_id"),
            "notebook": self.config.get("notebook"),
            "port": 53,
            "host": name.rstrip("."),
            "qtype": qtype,
            "decision": "allowed" if allowed else "denied",
            "reason": reason,
            "rule": rule,
            "client": client,
        }
        with self.log_lock:
            self.log_file.write(json.dumps(entry, sort_keys=True) + "\n")
            if self.log_file.tell() > ROTATE_BYTES:
                self.rotate()

    def rotate(self):
        """dns.jsonl -> .1 -> ... -> .5: the trail stays bounded on the host."""
        self.log_file.close()
        for i in range(KEEP_ROTATED, 0, -1):
            src = self.log_path if i == 1 else f"{self.log_path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.log_path}.{i}")
        self.log_file = open(self.log_path, "a", buffering=1)


def read_resolv_conf(path="/etc/resolv.conf"):
    servers = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append(parts[1])
    return [s for s in servers if ":" not in s]


def serve(config):
    resolver = Resolver(config)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            packet, sock = self.request
            reply = resolver.answer(packet, self.client_address[0])
            if reply:
                sock.sendto(reply, self.client_address)

    server = socketserver.ThreadingUDPServer((config.get("listen", "127.0.0.1"), config.get("port", 53)), Handler)
    server.daemon_threads = True
    print(f"[awf-dns] listening, upstreams {resolver.upstreams}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        serve(json.load(f))
