"""The kernel container's runtime (AWFProvisioner.runtime): a missing or a
refused runtime is a clear error before any container exists; the suite's
kernels really run under the runtime it names; and a kernel under gVisor,
both with its host network mode (the proxy's namespace) and with its own
network stack (the routed wiring), reaches only what its policy allows,
judged by the test internet. scripts/setup.sh registers `runsc` (host
network), `runsc-netstack` (the plain registration: Debian's runsc, too old
for this host's kernel) and `runsc-emulated` (the plain registration's mode,
runnable here: tests/gvisor/runsc-emulated)."""

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


def _registered(docker_client, kind: str) -> str | None:
    """A gVisor runtime registered on this engine: `host` (--network=host),
    `routed` (its own stack, and able to run it on this host's kernel) or
    `too-old` (its own stack, but too old for this host's kernel)."""
    info = docker_client.info()
    runtimes, _ = runtime.engine_runtimes(info)
    for name, rt in sorted(runtimes.items()):
        if not (rt.gvisor and rt.path) or rt.gvisor_network == "none":
            continue
        if not runtime.routed(rt):
            found = "host"
        else:
            too_old = runtime.too_old_for_kernel(runtime.local_version(rt), info.get("KernelVersion", ""))
            found = "too-old" if too_old else "routed"
        if found == kind:
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


def test_gvisor_too_old_for_the_host_kernel_is_refused_before_any_container(start_kernel, docker_client):
    """Debian 12's runsc with its own network stack cannot start any container
    on Linux >= 6.11 (gVisor issue 10704), and a failed gVisor start leaves
    its sandbox processes behind: refused first, with the fix."""
    name = _need(_registered(docker_client, "too-old"), "gVisor too old for this kernel (Debian's runsc, plain)")
    text = _refused_and_nothing_left(start_kernel, docker_client, {"runtime": name}, RuntimeRefused)
    assert runtime.ROOT_NS_ERROR in text and "release-20240801" in text and '"--network=host"' in text


def test_kernel_runs_under_the_suites_runtime(kernel, docker_client):
    """So a pass with AWF_TEST_RUNTIME=runsc cannot silently run under runc:
    gVisor's kernel shows its own dmesg and version."""
    res = kernel.probe(DMESG)
    assert ("Starting gVisor" in res["dmesg"]) == under_gvisor(), res
    c = [c for c in docker_client.containers.list(all=True, filters=naming.kernel_filter(kernel.kernel_id))
         if c.labels.get(naming.ROLE) == "kernel"]
    assert c and c[0].attrs["HostConfig"]["Runtime"] == (RUNTIME or docker_client.info()["DefaultRuntime"])


@pytest.mark.parametrize("kind", ["host", "routed"])
def test_gvisor_kernel_reaches_only_what_its_policy_allows(start_kernel, docker_client, testnet, kind):
    """One kernel under each gVisor wiring in every pass (whole suites run
    under them with AWF_TEST_RUNTIME): the proxy, transparent interception and
    the resolver work, and nothing reaches a blocked host, the canary or the
    DNS, sent by gVisor's host sockets or by its own network stack."""
    name = _need(_registered(docker_client, kind), f"gVisor runtime ({kind} wiring)")
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


def _host_status(pid: int) -> dict[str, str]:
    lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_routed_pod_shape(start_kernel, docker_client):
    """gVisor's own stack: the kernel is alone in a namespace whose only way
    out is the link into the proxy's; the holder of that namespace is nobody
    with no capability; the one-shot root steps are gone; the kernel's
    interfaces are loopback and its end of the link, routed via the proxy."""
    from awf_kernel.render import link

    name = _need(_registered(docker_client, "routed"), "gVisor runtime (routed wiring)")
    k = start_kernel(policy={"allow_domains": ["allowed.test"]}, settings={"runtime": name})
    pod = {c.labels[naming.ROLE]: c for c in sandbox.pod_containers(k.kernel_id)}
    assert set(pod) == {"proxy", "holder", "kernel"}, sorted(pod)  # firewall and link steps removed
    holder, kernel = pod["holder"], pod["kernel"]
    assert kernel.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
    assert holder.attrs["HostConfig"]["NetworkMode"] == "none"
    assert holder.attrs["Config"]["User"] == "65534:65534"
    status = _host_status(holder.attrs["State"]["Pid"])
    assert status["CapEff"].strip("0") == "" and status["CapPrm"].strip("0") == "", status
    assert status["Uid"].split()[0] == "65534"
    res = k.probe("""
        import json, os
        print(json.dumps({"dev": open("/proc/net/dev").read(), "route": open("/proc/net/route").read(),
                          "proxy": os.environ["HTTP_PROXY"], "resolv": open("/etc/resolv.conf").read()}))
    """)
    names = {line.split(":")[0].strip() for line in res["dev"].splitlines()[2:]}
    assert names == {"lo", link.KERNEL_IF}, res["dev"]
    default = [ln.split() for ln in res["route"].splitlines()[1:] if ln.split()[1] == "00000000"]
    assert len(default) == 1, res["route"]  # one default route: via the proxy's end of the link
    assert socket.inet_ntoa(bytes.fromhex(default[0][2])[::-1]) == link.PROXY_ADDRESS, res["route"]
    assert res["proxy"] == f"http://{link.PROXY_ADDRESS}:3128"
    assert f"nameserver {link.PROXY_ADDRESS}" in res["resolv"]
