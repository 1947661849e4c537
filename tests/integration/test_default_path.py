"""The real users' path, end to end: a sandboxed kernel whose proxy sits on
Docker's default `bridge` and reaches a host BEYOND the Docker host (the
`beyond_host` fixture: routed and masqueraded by the host, like the internet).

The beyond host's addresses come from 198.18.0.0/15, which is not globally
routable, so the sandbox refuses them unless the admin opts its subnet in
(`allow_private_destinations`), as for an intranet site. Judges: the beyond
host's DNS, web and canary logs, a listener on the Docker host's side of the
veth (where gateway.allowed.test points) and, for metadata.allowed.test, a
counting DROP rule for the link-local block.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest

from tests.integration import testnet_fixtures as tf
from tests.integration.test_attacks import TCP

POLICY = {"allow_domains": ["allowed.test", "*.allowed.test"]}

GET = """
import json, requests, urllib3
urllib3.disable_warnings()
def get(url, proxy_env, timeout=10):
    s = requests.Session(); s.trust_env = proxy_env
    try:
        r = s.get(url, verify=False, timeout=timeout)
        return [r.status_code, r.text[:300]]
    except Exception as e:
        return ["error", type(e).__name__]
"""


def _settings(beyond_host, private: list[str]) -> dict:
    return {"egress_network": "bridge", "dns_servers": [beyond_host.dns_ip], "allow_private_destinations": private}


@pytest.fixture
def kernel(start_kernel, beyond_host):
    """The admin opts in the beyond host's whole subnet, as one would an intranet range."""
    return start_kernel(policy=POLICY, settings=_settings(beyond_host, [beyond_host.subnet]))


@pytest.fixture
def kernel_web_only(start_kernel, beyond_host):
    """The admin opts in just the web hosts' addresses: the canary, the DNS
    server and the Docker host's side of the veth are not opted in."""
    return start_kernel(policy=POLICY, settings=_settings(
        beyond_host, [f"{beyond_host.ips[h]}/32" for h in tf.WEB_HOSTS]))


@pytest.fixture
def host_side_listeners(beyond_host, beyond_listener):
    """Listeners on the Docker host's side of the veth (gateway.allowed.test):
    a free port, plus 80 and 443 (the ports the proxy may connect to)."""
    with ExitStack() as stack:
        listeners = [beyond_listener]
        for port in (80, 443):
            try:
                listeners.append(stack.enter_context(tf.listening(beyond_host.gateway, port)))
            except OSError as exc:
                pytest.fail(f"cannot listen on {beyond_host.gateway}:{port} ({exc}): the judge would be blind")
        yield listeners


def _requests(hits: list[dict]) -> list[tuple]:
    return [(h["port"], h["path"], h["host"]) for h in hits if h["event"] == "request"]


# --- what must work --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("use_proxy_env", [True, False], ids=["proxy-env", "transparent"])
def test_allowed_host_answers(kernel, beyond_host, scheme, use_proxy_env):
    mark = beyond_host.mark()
    res = kernel.probe(GET, f"""
        print(json.dumps([get("{scheme}://allowed.test/default-path", {use_proxy_env!r}),
                          get("{scheme}://api.allowed.test/sub", {use_proxy_env!r})]))
    """)
    assert res == [[200, "hello from allowed.test"]] * 2
    port = 443 if scheme == "https" else 80
    assert _requests(beyond_host.web_hits("allowed.test", since=mark)) == [
        (port, "/default-path", "allowed.test"), (port, "/sub", "api.allowed.test")]
    assert beyond_host.canary_hits(since=mark) == []


def test_raw_socket_to_an_allowed_name_goes_through_the_proxy(kernel, beyond_host):
    """No proxy variables for a raw socket: intercepted, decided by Host, sent on."""
    mark = beyond_host.mark()
    res = kernel.probe(TCP, """
        ip = socket.gethostbyname("allowed.test")
        print(json.dumps(tcp(ip, 80, b"GET /raw HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n")))
    """)
    assert res.startswith("connected:HTTP/1.1 200"), res
    assert _requests(beyond_host.web_hits("allowed.test", since=mark)) == [(80, "/raw", "allowed.test")]


# --- what must reach nothing ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("use_proxy_env", [True, False], ids=["proxy-env", "transparent"])
def test_blocked_host_gets_nothing(kernel, beyond_host, scheme, use_proxy_env):
    mark = beyond_host.mark()
    res = kernel.probe(GET, f"""
        print(json.dumps([get("{scheme}://blocked.test/secret", {use_proxy_env!r}),
                          get("{scheme}://other.test/", {use_proxy_env!r})]))
    """)
    for r in res:
        assert r[0] in (403, "error"), res
    assert beyond_host.web_hits("blocked.test", since=mark) == []
    assert beyond_host.web_hits("other.test", since=mark) == []
    assert [q["name"] for q in beyond_host.dns_queries(since=mark)
            if "blocked" in q["name"] or "other" in q["name"]] == []


def test_canary_gets_nothing(kernel, beyond_host):
    """By address on many TCP ports, by name, and UDP: nothing arrives."""
    mark = beyond_host.mark()
    canary = beyond_host.ips["canary.test"]
    ports = [21, 22, 25, 53, 80, 443, 853, 2375, 3128, 5353, 8080, 8443, 9999, 50000]
    res = kernel.probe(TCP, f"""
        out = {{f"tcp:{{p}}": tcp("{canary}", p, b"GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n")
               for p in {ports!r}}}
        for port in (53, 123, 443, 853, 9999):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
            try:
                u.sendto(b"probe", ("{canary}", port)); out[f"udp:{{port}}"] = u.recv(100).decode()
            except OSError as e:
                out[f"udp:{{port}}"] = "error:" + type(e).__name__
        try:
            socket.gethostbyname("canary.test"); out["name"] = "resolved"
        except OSError as e:
            out["name"] = "error:" + type(e).__name__
        print(json.dumps(out))
    """, timeout=120)
    for target, result in res.items():
        assert "canary" not in result and "hello from" not in result, (target, result)
    assert res["name"].startswith("error:")
    assert beyond_host.canary_hits(since=mark) == []
    assert "canary.test" not in [q["name"] for q in beyond_host.dns_queries(since=mark)]


INSIDE_PROBE = """
    out = {{}}
    for url in ("http://{name}/", "https://{name}/", "http://{name}:{port}/", "http://{name}:3306/"):
        out["proxy " + url] = get(url, True, timeout=5)
        out["direct " + url] = get(url, False, timeout=5)
    try:
        ip = socket.gethostbyname("{name}")
    except OSError as e:
        ip = None
    out["resolved"] = ip
    if ip:
        for p in (80, 443, {port}, 22, 3306):
            out[f"tcp:{{p}}"] = tcp(ip, p, b"GET / HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n")
    print(json.dumps(out))
"""


def _probe_inside(kernel, beyond_host, listeners, name):
    """By the proxy, transparently and by raw socket, on the web ports, a
    canary port and the free port of a listener on the Docker host."""
    mark = beyond_host.mark()
    res = kernel.probe(GET, TCP, INSIDE_PROBE.format(name=name, port=listeners[0].port), timeout=180)
    time.sleep(0.5)  # the listeners record at accept time; let stragglers land
    hits = {f"{lst.host}:{lst.port}": lst.hits for lst in listeners if lst.hits}
    return res, beyond_host.canary_hits(since=mark), hits


@pytest.mark.parametrize("name", ["inside.allowed.test", "gateway.allowed.test"])
def test_allowed_name_pointing_inside_reaches_nothing(kernel_web_only, beyond_host, host_side_listeners, name):
    """The name is allowed; its answer is the canary / the Docker host, which
    the admin did not opt in: nothing may arrive there."""
    res, canary, host = _probe_inside(kernel_web_only, beyond_host, host_side_listeners, name)
    assert canary == [], res
    assert host == {}, res
    for target, result in res.items():
        assert "canary" not in str(result) and "hello from" not in str(result), (target, result)


def test_docker_host_unreachable_even_inside_an_opted_in_range(kernel, beyond_host, host_side_listeners):
    """The admin opted in a range that happens to hold one of the Docker host's
    own addresses (the host side of the veth; on a real LAN: the host's own
    address in the intranet range). The host is still never a destination."""
    res, canary, host = _probe_inside(kernel, beyond_host, host_side_listeners, "gateway.allowed.test")
    assert host == {}, f"the Docker host got connections: {host}\n{res}"
    assert canary == []


def test_opting_in_a_range_opts_in_every_address_in_it(kernel, beyond_host):
    """The contract, shown: with the whole subnet opted in, an allowed name that
    points at another address in it (here the canary) is reachable on the web
    ports. An admin opts in the intranet sites' range, nothing wider."""
    mark = beyond_host.mark()
    res = kernel.probe(GET, """print(json.dumps(get("http://inside.allowed.test/", True)))""")
    assert res == [200, "canary"]
    assert [h["port"] for h in beyond_host.canary_hits(since=mark) if h["event"] == "connect"] == [80]


def test_metadata_name_sends_nothing_to_the_link_local_block(kernel, beyond_host, metadata_guard):
    """metadata.allowed.test answers 169.254.169.254. The guard drops (and counts)
    anything towards 169.254.0.0/16 from Docker's bridges before routing, so
    even a broken sandbox sends nothing there; its count must stay 0."""
    mark = beyond_host.mark()
    res = kernel.probe(GET, TCP, """
        out = {}
        for url in ("http://metadata.allowed.test/latest/meta-data/", "https://metadata.allowed.test/"):
            out["proxy " + url] = get(url, True, timeout=5)
            out["direct " + url] = get(url, False, timeout=5)
        print(json.dumps(out))
    """, timeout=120)
    assert metadata_guard.packets() == 0, res
    assert beyond_host.canary_hits(since=mark) == []
    for target, result in res.items():
        assert result[0] in (403, 409, 502, 503, "error"), (target, result)
