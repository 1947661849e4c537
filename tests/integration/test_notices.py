"""Denials you can see: the per-cell notice and the audit trail."""

from __future__ import annotations

import json

from awf_kernel import audit
from awf_kernel.kernel_side.awf_notice import MIME
from tests.integration.conftest import ALLOW


def _notice(res: dict) -> dict | None:
    for msg in res["outputs"]:
        if msg["msg_type"] == "display_data" and MIME in msg["content"]["data"]:
            return msg["content"]["data"]
    return None


def test_cell_notice_names_each_blocked_host_and_the_fix(kernel, testnet):
    canary = testnet.ips["canary.test"]
    res = kernel.run(f"""
        import requests, socket
        s = requests.Session(); s.trust_env = False
        for call in (lambda: requests.get("http://blocked.test/a", timeout=5),      # via the proxy: 403
                     lambda: s.get("http://www.blocked.test/b", timeout=5),         # DNS refuses the name
                     lambda: requests.get("https://other-blocked.blocked.test/", timeout=5),
                     lambda: socket.create_connection(("{canary}", 22), timeout=5)):  # direct connection
            try:
                call()
            except Exception as e:
                print(type(e).__name__)
    """)
    data = _notice(res)
    assert data is not None, res["outputs"]
    hosts = {d["host"]: d for d in data[MIME]["denials"]}
    assert {"blocked.test", "www.blocked.test", "other-blocked.blocked.test", canary} <= set(hosts)
    assert "not in the allowlist" in hosts["blocked.test"]["reason"]
    assert '"allow_domains": [..., "blocked.test"]' in hosts["blocked.test"]["fix"]
    assert 22 in hosts[canary]["ports"] and "port" in hosts[canary]["reason"]
    assert "blocked.test" in data["text/plain"] and "allow_domains" in data["text/plain"]
    # the launcher's request (AWF_POLICY here) extended, not replaced: pasted, it keeps ALLOW
    line = data["text/plain"].splitlines()[-1]
    assert line.startswith("AWF_POLICY that would allow them")
    suggested = json.loads(line.split(": ", 1)[1])["allow_domains"]
    assert suggested[:len(ALLOW)] == ALLOW
    assert {"blocked.test", "www.blocked.test", "other-blocked.blocked.test"} <= set(suggested[len(ALLOW):])
    assert canary not in suggested
    assert "<table style='text-align:left" in data["text/html"]
    assert data[MIME]["kernel_id"] == kernel.kernel_id


def test_no_notice_when_nothing_was_denied(kernel):
    res = kernel.run("""
        import requests
        print(requests.get("http://allowed.test/", timeout=5).status_code)
    """)
    assert res["stdout"].strip() == "200"
    assert _notice(res) is None


def test_block_list_and_ceiling_reasons(start_kernel):
    k = start_kernel(policy={"allow_domains": ALLOW, "block_domains": ["api.allowed.test"]},
                     settings={"domain_ceiling": [".allowed.test", "other.test"]})
    res = k.run("""
        import requests
        for u in ("http://api.allowed.test/", "http://canary.test/"):
            try:
                print(requests.get(u, timeout=5).status_code)
            except Exception as e:
                print(type(e).__name__)
    """)
    hosts = {d["host"]: d for d in _notice(res)[MIME]["denials"]}
    assert hosts["api.allowed.test"]["reason"].startswith("in a block list")
    assert hosts["canary.test"]["reason"] == "outside the admin's domain_ceiling"


def test_audit_trail_outlives_the_kernel(start_kernel, testnet):
    k = start_kernel(policy={"allow_domains": ALLOW})
    k.run("""
        import requests
        requests.get("http://allowed.test/x", timeout=5)
        requests.get("http://blocked.test/y", timeout=5)
    """)
    kid = k.kernel_id
    k.shutdown()
    from awf_kernel.provisioner import AWFProvisioner

    recs = audit.records(AWFProvisioner().audit_dir, kid)
    assert recs, "no audit records kept after the kernel ended"
    for rec in recs:
        assert {"time", "kernel_id", "host", "port", "method", "decision", "reason", "rule", "bytes"} <= set(rec)
        assert rec["kernel_id"] == kid
    http_allowed = [r for r in recs if r["kind"] == "http" and r["host"] == "allowed.test"]
    assert http_allowed and http_allowed[0]["decision"] == "allowed" and http_allowed[0]["rule"] == "allowed.test"
    assert http_allowed[0]["bytes"] > 0
    denied = [r for r in recs if r["host"] == "blocked.test" and r["decision"] == "denied"]
    assert denied and {r["kind"] for r in denied} >= {"http", "dns"}
    assert all(r["reason"] == "not-allowed" for r in denied)
    folder = audit.find_kernel(AWFProvisioner().audit_dir, kid)
    summary = audit.summary(recs, audit.load_policy(folder))
    assert summary["denied"]["blocked.test"] >= 1 and summary["add"] == ["blocked.test"]
    assert summary["request"] == {"allow_domains": [*ALLOW, "blocked.test"]}


USER_IMAGE = "awf-kernel-test/user-image:1"
USER_DOCKERFILE = b"""FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-ipykernel \\
 && rm -rf /var/lib/apt/lists/*
"""


def test_notice_works_in_any_image_with_ipykernel(start_kernel, docker_client):
    """A user's image with nothing but ipykernel: no package of ours installed in it."""
    import io

    docker_client.images.build(fileobj=io.BytesIO(USER_DOCKERFILE), tag=USER_IMAGE, rm=True,
                               labels={"awf-kernel.test": "true"})
    k = start_kernel(policy={"allow_domains": ALLOW}, settings={"image": USER_IMAGE})
    res = k.run("""
        import urllib.request
        try:
            urllib.request.urlopen("http://blocked.test/", timeout=5)
        except Exception as e:
            print(type(e).__name__)
        import importlib.util
        print(importlib.util.find_spec("requests") is None)
    """)
    assert res["stdout"].split() == ["HTTPError", "True"]  # 403 through the proxy; no requests installed
    data = _notice(res)
    assert data is not None and data[MIME]["denials"][0]["host"] == "blocked.test"
