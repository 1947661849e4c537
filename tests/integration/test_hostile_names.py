"""Names with control characters, sent through the real proxy and resolver:
`awf-kernel logs` and the cell notice show them escaped, one line each, and
never suggest them as allow_domains entries (tests/unit/test_audit_escaping.py
covers the same with hand-written log lines)."""

from __future__ import annotations

import json

from awf_kernel.cli import main
from awf_kernel.kernel_side.awf_notice import MIME
from tests.integration.test_multi_sni import HELLO

HOSTILE = ["evil\x1b[2K\r12:00:00 allowed.test", "gro.ipyp\u202eevil.test", "x\n12:00:00 allowed http GET pypi.org",
           "<script>alert(1)</script>.test"]


def _clean(text: str) -> bool:
    return all(c == "\n" or 0x20 <= ord(c) < 0x7F for c in text)


def test_hostile_names_are_shown_escaped(start_kernel, testnet, capsys):
    k = start_kernel(policy={"allow_domains": ["allowed.test"]})
    allowed = testnet.ips["allowed.test"]
    res = k.run(HELLO + f"""
import socket
hostile = {HOSTILE!r}
for name in hostile:
    for port in (80, 3128):                     # intercepted, and through the explicit proxy
        s = socket.create_connection(({allowed!r} if port == 80 else PROXY, port), timeout=5)
        target = "/" if port == 80 else "http://" + name + "/"
        s.sendall(("GET " + target + " HTTP/1.1\\r\\nHost: " + name + "\\r\\nConnection: close\\r\\n\\r\\n").encode())
        try:
            s.recv(200)
        except OSError:
            pass
        s.close()
    hello({allowed!r}, [[name]])                 # as the SNI of an intercepted ClientHello
    try:
        socket.getaddrinfo(name.replace("\\n", "").replace("\\r", "") + ".", 80)   # and to the resolver
    except Exception:
        pass
""")
    assert res["error"] is None, res
    notice = [m["content"]["data"] for m in res["outputs"]
              if m["msg_type"] == "display_data" and MIME in m["content"]["data"]]
    assert notice, res["outputs"]
    data = notice[0]
    assert _clean(data["text/plain"]) and _clean(data["text/html"]) and _clean(json.dumps(data[MIME]))
    assert len(data["text/plain"].splitlines()) == len(data[MIME]["denials"]) + 2
    assert "<script>" not in data["text/html"]
    # no hostile name is ever suggested: nothing here can be allowed by metadata
    assert data["text/plain"].splitlines()[-1].startswith("No change to the notebook's metadata alone")

    kid = k.kernel_id
    assert main(["logs", kid]) == 0
    text = capsys.readouterr().out
    assert main(["logs", kid, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _clean(text) and len(text.splitlines()) == len(lines)
    recs = [json.loads(line) for line in lines]
    hosts = {r["host"] for r in recs}
    assert "evil\\x1b[2K\\x0d12:00:00 allowed.test" in hosts, hosts
    assert "gro.ipyp\\u202eevil.test" in hosts, hosts
    assert main(["logs", kid, "--summary", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["add"] == [] and s["request"] is None and not s["allowed"].keys() - {"allowed.test"}
