"""The kernel container's runtime (AWFProvisioner.runtime): a missing or a
refused runtime is a clear error before any container exists; the suite's
kernels really run under the runtime it names; and a kernel under gVisor
(registered with --network=host, as scripts/setup.sh does) reaches only what
its policy allows, judged by the test internet."""

from __future__ import annotations

import os
import pathlib
import socket

import pytest

from awf_kernel import naming, runtime
from awf_kernel.runtime import RuntimeMissing, RuntimeRefused
from awf_kernel.sandbox import docker as sandbox
from tests.conftest import in_ci
from tests.integration.conftest import RUNTIME
from tests.integration.gvisor import under_gvisor
from tests.integration.test_attacks import TCP

DMESG = """
import json, subprocess
r = subprocess.run(["dmesg"], capture_output=True, text=True)
print(json.dumps({"dmesg": r.stdout[:2000], "version": open("/proc/version").read().strip()}))
"""


def _registered(docker_client, want_host_network: bool) -> str | None:
    """A gVisor runtime registered on this engine with (or without) --network=host."""
    runtimes, _ = runtime.engine_runtimes(docker_client.info())
    for name, rt in sorted(runtimes.items()):
        if rt.gvisor and rt.path and (rt.gvisor_network == "host") == want_host_network:
            return name
    return None


def _need(name: str | None, what: str) -> str:
    if name is None:
        msg = f"no {what} is registered with the Docker engine (scripts/setup.sh registers it)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return name


def _runsc_processes() -> set[int]:
    out = set()
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("runsc"):
                    out.add(int(d.name))
            except OSError:
                continue
    return out


def _ours(docker_client) -> set[str]:
    """This process's kernel containers and networks, warm pool pods aside (other
    test runs may share the engine: one listing call, no per-container inspect)."""
    server = f"{socket.gethostname()}:{os.getpid()}"
    filters = naming.kernel_filter(server=server)
    ids = {c["Id"] for c in docker_client.api.containers(all=True, filters=filters)
           if not (c.get("Labels") or {}).get(naming.KERNEL_ID, "").startswith(naming.POOL_ID_PREFIX)}
    return ids | {n["Id"] for n in docker_client.api.networks(filters=filters)
                  if not (n.get("Labels") or {}).get(naming.KERNEL_ID, "").startswith(naming.POOL_ID_PREFIX)}


def _refused_and_nothing_left(start_kernel, docker_client, settings, error):
    before = _ours(docker_client)
    sandboxes = _runsc_processes()
    with pytest.raises(error) as info:
        start_kernel(settings=settings)
    sandbox.wait_for_removals()
    assert _ours(docker_client) <= before, "a refused runtime left containers behind"
    # A gVisor start that fails leaves its sandbox processes behind: refused before, none was tried.
    assert _runsc_processes() - sandboxes == set()
    return str(info.value)


def test_missing_runtime_names_the_daemon_json_fix(start_kernel, docker_client):
    text = _refused_and_nothing_left(start_kernel, docker_client, {"runtime": "awf-no-such-runtime"}, RuntimeMissing)
    assert "awf-no-such-runtime" in text and "not registered" in text
    assert "daemon.json" in text and "kill -HUP $(pidof dockerd)" in text


def test_gvisor_with_its_own_network_stack_is_refused(start_kernel, docker_client):
    """The plain registration (`{"path": "/usr/bin/runsc"}`) runs gVisor's
    netstack, which sends the kernel's packets past the pod's rules."""
    name = _need(_registered(docker_client, want_host_network=False), "gVisor runtime without --network=host")
    text = _refused_and_nothing_left(start_kernel, docker_client, {"runtime": name}, RuntimeRefused)
    assert "own network stack" in text and '"--network=host"' in text


def test_kernel_runs_under_the_suites_runtime(kernel, docker_client):
    """So a pass with AWF_TEST_RUNTIME=runsc cannot silently run under runc:
    gVisor's kernel shows its own dmesg and version."""
    res = kernel.probe(DMESG)
    assert ("Starting gVisor" in res["dmesg"]) == under_gvisor(), res
    c = [c for c in docker_client.containers.list(all=True, filters=naming.kernel_filter(kernel.kernel_id))
         if c.labels.get(naming.ROLE) == "kernel"]
    assert c and c[0].attrs["HostConfig"]["Runtime"] == (RUNTIME or docker_client.info()["DefaultRuntime"])


def test_gvisor_kernel_reaches_only_what_its_policy_allows(start_kernel, docker_client, testnet):
    """One kernel under gVisor in every pass (the whole suite runs under it
    with AWF_TEST_RUNTIME=runsc): the proxy, transparent interception and the
    resolver work, and nothing reaches a blocked host, the canary or the DNS."""
    name = _need(_registered(docker_client, want_host_network=True), "gVisor runtime with --network=host")
    k = start_kernel(policy={"allow_domains": ["allowed.test"]}, settings={"runtime": name})
    assert "Starting gVisor" in k.probe(DMESG)["dmesg"]
    mark = testnet.mark()
    canary, blocked, dns = testnet.ips["canary.test"], testnet.ips["blocked.test"], testnet.dns_ip
    res = k.probe(TCP, f"""
        import requests, struct
        out = {{"proxied": requests.get("http://allowed.test/", timeout=10).status_code,
                "transparent": requests.get("http://allowed.test/", timeout=10,
                                            proxies={{"http": None, "https": None}}).status_code}}
        try:
            out["blocked"] = requests.get("http://blocked.test/", timeout=10).status_code
        except requests.RequestException as e:
            out["blocked"] = type(e).__name__
        out["canary"] = [tcp("{canary}", p) for p in (22, 8080, 9999)]
        out["blocked_ip"] = tcp("{blocked}", 8080)
        q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\\x06gvleak\\x07blocked\\x04test\\x00" + struct.pack("!HH", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(q, ("{dns}", 53))
        try:
            r = s.recv(512); out["dns_rcode"] = r[3] & 15
        except OSError as e:
            out["dns_rcode"] = type(e).__name__
        print(json.dumps(out))
    """)
    assert res["proxied"] == 200 and res["transparent"] == 200, res
    assert res["blocked"] == 403, res
    assert all(r.startswith("error:") for r in res["canary"] + [res["blocked_ip"]]), res
    assert res["dns_rcode"] == 3, res  # NXDOMAIN from the pod's resolver, not the test DNS
    assert testnet.canary_hits(since=mark) == []
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert [q for q in testnet.dns_queries(since=mark) if "gvleak" in q.get("name", "")] == []
    assert os.environ.get("AWF_TEST_RUNTIME", "") == RUNTIME
