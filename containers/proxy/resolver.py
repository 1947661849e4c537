"""[awf-dns] The pod's filtering resolver.

Answers only names the policy allows; every other name gets NXDOMAIN from
here, so no query for a name outside the policy ever leaves the pod (DNS
exfiltration through a resolver chain is the classic hole in egress filters).

The kernel shares this process's network namespace and is hostile, so:

- Queries are parsed with dnspython and validated (one question, class IN,
  opcode QUERY, no answer/authority records, a name of LDH labels only, a
  common qtype). Nothing the kernel sent is forwarded: an allowed query is
  re-built from the validated name and qtype, with a fresh id from `secrets`.
- Each upstream query uses its own *connected* UDP socket on a random port,
  so datagrams from any other address or port (the kernel can read the port
  in /proc/net/udp) are dropped by the socket layer; a reply counts only if
  its id, QR bit, opcode and question all match ours. Truncated replies are
  retried over TCP to the same upstream.
- The client gets a reply built for its own query: its id and validated
  question, the upstream's rcode, the answer RRsets on the query's CNAME chain
  and the SOA of a negative answer; nothing from the additional section.
- DNS rebinding (one of three layers; Squid and iptables check too): A records
  whose address is not globally routable (config `non_global`, rendered from
  awf_kernel.addresses.NON_GLOBAL_V4) are dropped unless inside
  `allowed_private`; addresses in `never` are dropped whatever is allowed.
  When that leaves no address the client gets NOERROR with no address
  (NODATA: "no address for this name", not "no such name") and the log says
  `private-address`.
- AAAA records are always dropped (NODATA): pods have no IPv6 route out, and
  an IPv4-mapped AAAA (::ffff:10.0.0.1) is an IPv4 destination in disguise.
  The ipv4hint/ipv6hint parameters of HTTPS/SVCB records go for the same
  reason.
- UDP and TCP are both served on the configured port (5353; the firewall
  redirects port 53 there, so port 53 stays privileged and the kernel cannot
  bind it). Neither socket sets SO_REUSEADDR/SO_REUSEPORT. TCP connections are
  capped in number, message size and time, and served on their own threads,
  so a slow TCP client never delays UDP.

Names with an underscore (_dmarc, SRV's _service._proto) are refused like any
other non-LDH name: nothing in a pod needs them, since every connection goes
through Squid by host name.

Runs with Debian's python3 and python3-dnspython (no pip in the proxy image).
`decide`/`matches` mirror awf_kernel.policy (tests check they agree); they
are repeated here because awf_kernel is not installed in the proxy container.
"""

import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ROTATE_BYTES = 10 * 1024 * 1024
KEEP_ROTATED = 5

MAX_NAME = 253
LABEL = re.compile(rb"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch only
NUMERIC_LABEL = re.compile(rb"[0-9]+|0x[0-9a-f]*")  # a last label URL parsers read as an IP
QTYPES = frozenset(dns.rdatatype.from_text(t) for t in (
    "A", "AAAA", "CNAME", "MX", "TXT", "SRV", "HTTPS", "SVCB", "NS", "SOA", "PTR", "CAA"))
SVCB_TYPES = frozenset((dns.rdatatype.HTTPS, dns.rdatatype.SVCB))
SVCB_HINTS = frozenset((4, 6))  # ipv4hint, ipv6hint (RFC 9460)
CHAIN_TYPES = frozenset((dns.rdatatype.CNAME,))

UPSTREAM_TIMEOUT = 2.0       # seconds per upstream, per transport
UPSTREAM_PAYLOAD = 1232      # EDNS payload we advertise (the DNS flag day value)
CLIENT_PAYLOAD_MAX = 1232    # largest UDP reply we send a client
TCP_TIMEOUT = 5.0            # a client must deliver each whole message within this
TCP_MAX_CONNECTIONS = 16
TCP_MAX_QUERY = 4096         # bytes; a valid query is well under 300
TCP_MAX_MESSAGES = 32        # per connection
UDP_MAX_INFLIGHT = 64        # queries being answered at once over UDP


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


def validate_name(qname):
    """The lowercase text of an acceptable query name, or None.

    Accepted: 1-63 byte labels of letters, digits and inner hyphens, at most
    253 characters in all, a last label that is not numeric."""
    labels = [label.lower() for label in qname.labels]
    if labels and labels[-1] == b"":
        labels.pop()  # the root label of an absolute name
    if not labels or not all(LABEL.fullmatch(label) for label in labels):
        return None
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    text = b".".join(labels).decode("ascii")
    return text if len(text) <= MAX_NAME else None


def networks(values):
    out = []
    for value in values or ():
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            continue
        if net.version == 4:
            out.append(net)
    return tuple(out)


class Query:
    """A client's query once parsed: the message, its validated name and type."""

    def __init__(self, message, name, qtype):
        self.message = message
        self.name = name
        self.qtype = qtype


class Resolver:
    def __init__(self, config):
        self.config = config
        self.upstreams = [u for u in (config.get("upstreams") or read_resolv_conf()) if is_ipv4(u)]
        self.upstream_port = int(config.get("upstream_port", 53))
        self.allowed_private = networks(config.get("allowed_private"))
        self.non_global = networks(config.get("non_global")) if "non_global" in config else None
        self.never = networks(config.get("never"))
        self.log_lock = threading.Lock()
        self.log_path = config.get("log")
        self.log_file = open(self.log_path, "a", buffering=1) if self.log_path else None

    # -- the client's side -------------------------------------------------

    def answer(self, packet, client, proto="udp"):
        """The wire reply for one query packet, or None to send nothing."""
        try:
            return self._answer(packet, client, proto)
        except Exception as exc:  # noqa: BLE001 - the resolver must outlive any packet
            print(f"[awf-dns] internal error: {type(exc).__name__}", file=sys.stderr, flush=True)
            return None

    def _answer(self, packet, client, proto):
        try:
            message = dns.message.from_wire(packet)
        except Exception:  # noqa: BLE001 - any parse failure is the client's FORMERR
            self.record(None, None, False, "malformed", None, client, proto)
            return formerr(packet)
        if message.flags & dns.flags.QR:
            return None  # a response: never answer one (no loops, no reflection)
        if message.opcode() != dns.opcode.QUERY:
            self.record(None, None, False, "malformed", None, client, proto)
            return self.reply(message, dns.rcode.NOTIMP, proto, question=False)
        if (len(message.question) != 1 or message.answer or message.authority
                or any(rrset.rdtype != dns.rdatatype.OPT for rrset in message.additional)):
            self.record(None, None, False, "malformed", None, client, proto)
            return self.reply(message, dns.rcode.FORMERR, proto, question=False)
        question = message.question[0]
        name = validate_name(question.name)
        qtype = int(question.rdtype)
        if name is None:
            self.record(None, qtype, False, "invalid-name", None, client, proto)
            return self.reply(message, dns.rcode.NXDOMAIN, proto)
        if question.rdclass != dns.rdataclass.IN or question.rdtype not in QTYPES:
            self.record(name, qtype, False, "unsupported-type", None, client, proto)
            return self.reply(message, dns.rcode.REFUSED, proto)
        allowed, reason, rule = decide(self.config, name)
        if not allowed:
            self.record(name, qtype, False, reason, rule, client, proto)
            return self.reply(message, dns.rcode.NXDOMAIN, proto)
        upstream = self.forward(name, question.rdtype)
        if upstream is None:
            self.record(name, qtype, True, "upstream-failed", rule, client, proto)
            return self.reply(message, dns.rcode.SERVFAIL, proto)
        answer, authority, addresses, dropped = self.filter(name, question.rdtype, upstream)
        rcode = upstream.rcode()
        if dropped and not addresses:
            reason = "private-address"
            answer, authority = [r for r in answer if r.rdtype in CHAIN_TYPES], []
        self.record(name, qtype, reason == "allowed", reason, rule, client, proto,
                    answers=addresses, dropped=dropped)
        return self.reply(message, rcode, proto, answer=answer, authority=authority)

    def reply(self, query, rcode, proto, question=True, answer=(), authority=()):
        """A reply built for the client's query: its id, RD bit, (validated)
        question and EDNS use; our rcode and records."""
        response = dns.message.make_response(query, recursion_available=True,
                                             our_payload=CLIENT_PAYLOAD_MAX)
        if not question:
            response.question = []
        response.set_rcode(rcode)
        response.answer = list(answer)
        response.authority = list(authority)
        if proto == "tcp":
            limit = 65535
        elif query.edns >= 0:
            limit = min(max(query.payload, 512), CLIENT_PAYLOAD_MAX)
        else:
            limit = 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer, response.authority = [], []
            response.flags |= dns.flags.TC  # the client retries over TCP
            return response.to_wire(max_size=limit)

    # -- what goes back ----------------------------------------------------

    def filter(self, name, qtype, upstream):
        """(answer RRsets, authority RRsets, addresses kept, addresses dropped)
        from an upstream reply: only records on the CNAME chain from `name`,
        A records checked for reachability, no AAAA, no SVCB address hints."""
        chain = {dns.name.from_text(name)}
        wanted = {qtype} | CHAIN_TYPES
        rrsets = [r for r in upstream.answer if r.rdclass == dns.rdataclass.IN and r.rdtype in wanted]
        grew = True
        while grew:  # follow CNAMEs in any order the upstream listed them
            grew = False
            for rrset in rrsets:
                if rrset.name in chain and rrset.rdtype == dns.rdatatype.CNAME:
                    for rdata in rrset:
                        if rdata.target not in chain:
                            chain.add(rdata.target)
                            grew = True
        answer, kept, dropped = [], [], []
        for rrset in rrsets:
            if rrset.name not in chain or rrset.rdtype == dns.rdatatype.AAAA:
                continue
            if rrset.rdtype == dns.rdatatype.A:
                good = [rd for rd in rrset if self.reachable(rd.address)]
                dropped += [rd.address for rd in rrset if not self.reachable(rd.address)]
                kept += [rd.address for rd in good]
                rrset = copy_rrset(rrset, good)
            elif rrset.rdtype in SVCB_TYPES:
                rrset = copy_rrset(rrset, [rd for rd in map(strip_hints, rrset) if rd is not None])
            if rrset is not None:
                answer.append(rrset)
        authority = [r for r in upstream.authority
                     if r.rdclass == dns.rdataclass.IN and r.rdtype == dns.rdatatype.SOA]
        return answer, authority, kept, dropped

    def reachable(self, address):
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in self.never):
            return False
        if any(ip in net for net in self.allowed_private):
            return True
        if self.non_global is None:  # a config from before `non_global` existed
            return ip.is_global
        return not any(ip in net for net in self.non_global)

    # -- the upstream's side -----------------------------------------------

    def forward(self, name, qtype):
        """The upstream's reply (a dns.message.Message) to a query we build
        ourselves for `name`/`qtype`, or None. Tries each upstream in order."""
        for server in self.upstreams:
            query = dns.message.make_query(dns.name.from_text(name), qtype, use_edns=0,
                                           payload=UPSTREAM_PAYLOAD)
            query.id = secrets.randbelow(65536)
            try:
                reply, truncated = self.ask_udp(server, query)
                if truncated:
                    query.id = secrets.randbelow(65536)
                    reply = self.ask_tcp(server, query)
            except OSError:
                continue
            if reply is not None and reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return reply
        return None

    def ask_udp(self, server, query):
        """(reply, truncated) from a connected UDP socket on a random port;
        datagrams that do not answer `query` are ignored until the timeout."""
        wire = query.to_wire()
        deadline = time.monotonic() + UPSTREAM_TIMEOUT
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", 0))
            sock.connect((server, self.upstream_port))
            sock.send(wire)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, False
                sock.settimeout(remaining)
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    return None, False
                reply, truncated = parse_reply(query, data)
                if reply is not None:
                    return reply, truncated

    def ask_tcp(self, server, query):
        wire = query.to_wire()
        deadline = time.monotonic() + UPSTREAM_TIMEOUT
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(UPSTREAM_TIMEOUT)
            sock.connect((server, self.upstream_port))
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(recv_exact(sock, 2, deadline), "big")
            reply, _ = parse_reply(query, recv_exact(sock, size, deadline))
            return reply

    # -- the audit trail ---------------------------------------------------

    def record(self, name, qtype, allowed, reason, rule, client, proto="udp", answers=None, dropped=None):
        """One JSON line. `name` is None or a validated lowercase LDH name, so
        the host field can carry no control bytes."""
        if self.log_file is None:
            return
        entry = {
            "time": round(time.time(), 3),
            "kind": "dns",
            "kernel_id": self.config.get("kernel_id"),
            "notebook": self.config.get("notebook"),
            "port": 53,
            "proto": proto,
            "host": name,
            "qtype": qtype,
            "decision": "allowed" if allowed else "denied",
            "reason": reason,
            "rule": rule,
            "client": client,
        }
        if answers is not None:
            entry["answers"] = answers
        if dropped:
            entry["dropped"] = dropped
        with self.log_lock:
            self.log_file.write(json.dumps(entry, sort_keys=True) + "\n")
            if self.log_file.tell() > ROTATE_BYTES:
                self.rotate()

    def close(self):
        with self.log_lock:
            if self.log_file is not None:
                self.log_file.close()
                self.log_file = None

    def rotate(self):
        """dns.jsonl -> .1 -> ... -> .5: the trail stays bounded on the host."""
        self.log_file.close()
        for i in range(KEEP_ROTATED, 0, -1):
            src = self.log_path if i == 1 else f"{self.log_path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.log_path}.{i}")
        self.log_file = open(self.log_path, "a", buffering=1)


def formerr(packet):
    """FORMERR for a packet dnspython could not parse: its id if it has one,
    no question (nothing of the packet is echoed), or nothing for a response."""
    if len(packet) < 12:
        return None
    if packet[2] & 0x80:
        return None  # QR set: a response, never answered
    response = dns.message.Message(id=int.from_bytes(packet[:2], "big"))
    response.flags = dns.flags.QR | dns.flags.RA
    response.set_rcode(dns.rcode.FORMERR)
    return response.to_wire()


def parse_reply(query, data):
    """(reply, truncated) if `data` answers `query` (same id, a response, a
    QUERY, the same single question), else (None, False)."""
    truncated = False
    try:
        reply = dns.message.from_wire(data, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        reply, truncated = exc.message(), True
    except Exception:  # noqa: BLE001 - garbage is not an answer
        return None, False
    if (reply is None or reply.id != query.id or not reply.flags & dns.flags.QR
            or reply.opcode() != dns.opcode.QUERY or len(reply.question) != 1):
        return None, False
    ours, theirs = query.question[0], reply.question[0]
    if (theirs.name != ours.name or theirs.rdtype != ours.rdtype or theirs.rdclass != ours.rdclass):
        return None, False
    return reply, truncated


def copy_rrset(rrset, rdatas):
    if not rdatas:
        return None
    out = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
    for rdata in rdatas:
        out.add(rdata, rrset.ttl)
    return out


def strip_hints(rdata):
    """An HTTPS/SVCB record without ipv4hint/ipv6hint, or None if a
    `mandatory` parameter requires one of them."""
    keys = {int(k) for k in rdata.params}
    if not keys & SVCB_HINTS:
        return rdata
    mandatory = rdata.params.get(0)
    if mandatory is not None and {int(k) for k in mandatory.keys} & SVCB_HINTS:
        return None
    try:
        return rdata.replace(params={k: v for k, v in rdata.params.items() if int(k) not in SVCB_HINTS})
    except Exception:  # noqa: BLE001 - a record we cannot rewrite is dropped
        return None


def recv_exact(sock, size, deadline):
    """`size` bytes from a stream socket, all of them before `deadline`."""
    chunks, have = [], 0
    while have < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(size - have)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def is_ipv4(text):
    try:
        return ipaddress.ip_address(str(text)).version == 4
    except ValueError:
        return False


def read_resolv_conf(path="/etc/resolv.conf"):
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        return []
    return [s for s in servers if is_ipv4(s)]


class Server:
    """UDP and TCP listeners on one address and port, each on its own threads."""

    def __init__(self, resolver, listen="127.0.0.1", port=5353):
        self.resolver = resolver
        self.stopping = threading.Event()
        self.udp, self.tcp = bind_pair(listen, port)
        self.address = self.udp.getsockname()
        self.udp_slots = threading.BoundedSemaphore(UDP_MAX_INFLIGHT)
        self.tcp_slots = threading.BoundedSemaphore(TCP_MAX_CONNECTIONS)
        self.threads = []

    def start(self):
        for target in (self.serve_udp, self.serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=2)
        self.udp.close()
        self.tcp.close()
        self.resolver.close()

    def serve_udp(self):
        self.udp.settimeout(0.25)
        while not self.stopping.is_set():
            try:
                packet, client = self.udp.recvfrom(65535)
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            if not self.udp_slots.acquire(blocking=False):
                continue  # overloaded: drop, as a busy resolver does; the client retries
            threading.Thread(target=self.udp_one, args=(packet, client), daemon=True).start()

    def udp_one(self, packet, client):
        try:
            reply = self.resolver.answer(packet, client[0], "udp")
            if reply:
                self.udp.sendto(reply, client)
        except OSError:
            pass
        finally:
            self.udp_slots.release()

    def serve_tcp(self):
        self.tcp.settimeout(0.25)
        while not self.stopping.is_set():
            try:
                conn, client = self.tcp.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            if not self.tcp_slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self.tcp_one, args=(conn, client), daemon=True).start()

    def tcp_one(self, conn, client):
        """Length-prefixed queries, each delivered whole within TCP_TIMEOUT."""
        try:
            with conn:
                for _ in range(TCP_MAX_MESSAGES):
                    deadline = time.monotonic() + TCP_TIMEOUT
                    size = int.from_bytes(recv_exact(conn, 2, deadline), "big")
                    if not 12 <= size <= TCP_MAX_QUERY:
                        return
                    packet = recv_exact(conn, size, deadline)
                    reply = self.resolver.answer(packet, client[0], "tcp")
                    if not reply:
                        return
                    conn.settimeout(TCP_TIMEOUT)
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except (OSError, ConnectionError):
            pass
        finally:
            self.tcp_slots.release()


def bind_pair(listen, port):
    """A bound UDP socket and a listening TCP socket on the same port (port 0:
    any free port both can have). No SO_REUSEADDR/SO_REUSEPORT on either:
    nobody else may bind the port while we hold it."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((listen, port))
            tcp.bind((listen, udp.getsockname()[1]))
            tcp.listen(64)
            return udp, tcp
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
    raise OSError("no free port for both UDP and TCP")


GENERATION_FILE = "/run/awf/resolver.generation"


def announce(config, path=GENERATION_FILE):
    """Tell the reload step which policy this resolver now answers by: the
    rendered config's generation, written only once the policy is in force."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(config.get("generation", "")))
    os.replace(tmp, path)


def reload(servers, config_path, generation_file=GENERATION_FILE):
    """SIGHUP: a new policy (live policy, a pool pod claimed by a kernel).
    The sockets stay bound throughout, so the port is never free for the
    kernel that shares this namespace; only the deciding state is swapped.
    A config that does not load keeps the old policy and announces nothing,
    so the reload step fails and the pod is stopped (fail closed)."""
    try:
        with open(config_path) as f:
            config = json.load(f)
        fresh = Resolver(config)
    except Exception as exc:  # noqa: BLE001 - the running policy stays in force
        print(f"[awf-dns] reload failed, keeping the current policy: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return
    old = servers[0].resolver
    for server in servers:
        server.resolver = fresh
    threading.Timer(5.0, old.close).start()  # answers in flight finish with the old log file
    announce(config, generation_file)
    print(f"[awf-dns] policy {config.get('generation')} in force", file=sys.stderr, flush=True)


def listen_addresses(config, environ=os.environ):
    """The policy's address, and the kernel's link when the pod has one
    (routed pods: the kernel reaches the resolver from beyond the link)."""
    out = [config.get("listen", "127.0.0.1")]
    link = environ.get("AWF_LINK_ADDRESS", "")
    if link and is_ipv4(link) and link not in out:
        out.append(link)
    return out


def serve(config, config_path=None, generation_file=GENERATION_FILE):
    resolver = Resolver(config)
    port = int(config.get("port", 5353))
    servers = [Server(resolver, address, port).start() for address in listen_addresses(config)]
    if config_path:
        signal.signal(signal.SIGHUP, lambda *_: reload(servers, config_path, generation_file))
    announce(config, generation_file)
    print(f"[awf-dns] listening on {', '.join(f'{h}:{p}' for h, p in (s.address for s in servers))} udp+tcp, "
          f"upstreams {resolver.upstreams}", file=sys.stderr, flush=True)
    while True:
        for thread in (t for server in servers for t in server.threads):
            thread.join(timeout=60)
            if not thread.is_alive():
                print("[awf-dns] a listener stopped; exiting", file=sys.stderr, flush=True)
                sys.exit(70)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        first = json.load(f)
    serve(first, sys.argv[1], first.get("generation_file", GENERATION_FILE))
