"""A TLS ClientHello that carries several server names (docs/architecture.md,
"TLS ClientHello with several SNI").

RFC 6066 allows one server_name extension with one host_name; a hand-built
ClientHello can carry two extensions, or two names in one. Squid 5 keeps the
name of the last server_name extension and judges by it. Whatever it keeps,
the blocked host's server must see nothing: the judge is the test internet's
log, not the kernel's view.
"""

from __future__ import annotations

import json

import pytest

from awf_kernel import audit
from awf_kernel.provisioner import AWFProvisioner
from tests.integration.test_attacks import PROXY

# Run inside the kernel: stdlib only. `hello` sends one hand-built ClientHello
# and says what came back (a ServerHello, an alert, a close, an error).
# (PROXY: the explicit proxy as the kernel reaches it, see test_attacks)
HELLO = PROXY + r'''
import json, os, socket, struct

def ext(kind, body):
    return struct.pack("!HH", kind, len(body)) + body

def sni_ext(*names):
    entries = b"".join(b"\x00" + struct.pack("!H", len(n)) + n.encode() for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)

def client_hello(sni_exts):
    exts = b"".join(sni_exts)
    exts += ext(10, b"\x00\x04\x00\x1d\x00\x17")                       # groups: x25519, P-256
    exts += ext(11, b"\x01\x00")                                       # point formats
    sigs = b"\x04\x03\x08\x04\x04\x01\x05\x03\x08\x05\x05\x01\x08\x06\x06\x01"
    exts += ext(13, struct.pack("!H", len(sigs)) + sigs)               # signature algorithms
    exts += ext(43, b"\x04\x03\x04\x03\x03")                           # TLS 1.3, 1.2
    share = b"\x00\x1d\x00\x20" + os.urandom(32)
    exts += ext(51, struct.pack("!H", len(share)) + share)             # key share
    suites = b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f\xc0\x2c\xc0\x30"
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + struct.pack("!H", len(suites)) + suites
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake

def hello(ip, sni_lists, port=443, connect=None):
    s = socket.create_connection((ip, port), timeout=5)
    try:
        if connect:
            s.sendall(f"CONNECT {connect}:443 HTTP/1.1\r\nHost: {connect}:443\r\n\r\n".encode())
            head = s.recv(4096).decode(errors="replace").split("\r\n")[0]
            if " 200 " not in head:
                return "connect:" + head
        s.sendall(client_hello([sni_ext(*names) for names in sni_lists]))
        data = s.recv(4096)
        if not data:
            return "closed"
        if data[0] == 0x16 and len(data) > 5 and data[5] == 0x02:
            return "server-hello"
        if data[0] == 0x15 and len(data) >= 7:
            return f"alert:{data[6]}"
        return "data:" + data[:40].hex()
    except OSError as e:
        return "error:" + type(e).__name__
    finally:
        s.close()
'''

A, B = "allowed.test", "blocked.test"
CASES = {
    # name: (where the kernel connects, server_name extensions in order)
    "to-allowed-ip:allowed-then-blocked": ("allowed", [[A], [B]]),
    "to-allowed-ip:blocked-then-allowed": ("allowed", [[B], [A]]),
    "to-blocked-ip:allowed-then-blocked": ("blocked", [[A], [B]]),
    "to-blocked-ip:blocked-then-allowed": ("blocked", [[B], [A]]),
    "to-blocked-ip:one-extension-allowed-blocked": ("blocked", [[A, B]]),
    "to-blocked-ip:one-extension-blocked-allowed": ("blocked", [[B, A]]),
    "connect-allowed:blocked-then-allowed": ("connect:" + A, [[B], [A]]),
    "connect-allowed:allowed-then-blocked": ("connect:" + A, [[A], [B]]),
    "connect-blocked:blocked-then-allowed": ("connect:" + B, [[B], [A]]),
    "connect-blocked:allowed-then-blocked": ("connect:" + B, [[A], [B]]),
}


def _call(where: str, snis: list, ips: dict) -> str:
    if where.startswith("connect:"):
        return f"hello(PROXY, {snis!r}, port=3128, connect={where.split(':', 1)[1]!r})"
    return f"hello({ips[where + '.test']!r}, {snis!r})"


@pytest.mark.parametrize("case", list(CASES))
def test_several_sni_never_reach_a_blocked_host(kernel, testnet, case):
    where, snis = CASES[case]
    ips = {"allowed.test": testnet.ips["allowed.test"], "blocked.test": testnet.ips["blocked.test"]}
    mark = testnet.mark()
    result = kernel.probe(HELLO, f"print(json.dumps({_call(where, snis, ips)}))")
    blocked_hits = testnet.web_hits("blocked.test", since=mark)
    allowed_hits = testnet.web_hits("allowed.test", since=mark)
    logged = [(r["sni"], r["decision"], r.get("server_addr")) for r in audit.records(AWFProvisioner().audit_dir,
                                                                                   kernel.kernel_id)
              if r["kind"] == "https" and r["sni"]]
    report = json.dumps({"case": case, "kernel saw": result, "squid logged (sni, decision, server_addr)": logged,
                         "allowed.test server": [(h.get("event"), h.get("sni"), h.get("ok"), h.get("error"))
                                                 for h in allowed_hits]})
    print(report)
    assert blocked_hits == [], report
    assert result != "server-hello" or allowed_hits, report  # a TLS answer came from the allowed server, if any
