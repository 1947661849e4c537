"""The warm pool (AWFProvisioner.pool_size): a pooled kernel is exactly a
cold one, a pool pod is deny-all until claimed and never reused, and pool
pods go away with their server (or `awf-kernel gc` once it is gone)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from awf_kernel import naming
from awf_kernel.cli import main
from awf_kernel.sandbox import docker as sandbox
from awf_kernel.sandbox.pool import POOL
from tests.integration.conftest import ALLOW

pytestmark = pytest.mark.docker

POOLED = {"pool_size": 1}


@pytest.fixture(autouse=True, scope="module")
def own_pool():
    """The pools these tests fill are gone when the module ends."""
    yield
    POOL.close()
    POOL.reopen()


ME = f"{socket.gethostname()}:{os.getpid()}"  # this process is the server of the pools it fills


def _ready_pool_proxies(docker_client, server: str = ME) -> list:
    """This server's unclaimed pool pods' proxies (one listing call: no
    per-container inspect that a pod removed meanwhile would fail)."""
    found = docker_client.api.containers(all=True, filters={"label": [naming.POOL, f"{naming.ROLE}=proxy",
                                                                     f"{naming.SERVER}={server}"]})
    claimed = {(c.get("Labels") or {}).get(naming.POD) for c in docker_client.api.containers(
        all=True, filters={"label": [naming.POD]})}
    return [docker_client.containers.get(c["Id"]) for c in found
            if (c.get("Labels") or {}).get(naming.KERNEL_ID) not in claimed]


def _pool_ready() -> bool:
    """This process's pool holds a ready pod (after a claim it refills with a delay)."""
    with POOL._lock:
        return any(POOL._ready.values())


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _config(container) -> dict:
    """What decides a container's powers, without its identity."""
    a = container.attrs
    h, c = a["HostConfig"], a["Config"]
    env = sorted(e for e in c["Env"] if not e.startswith(("AWF_KERNEL_ID=", "HOSTNAME=")))
    return {"user": c["User"], "cap_drop": h["CapDrop"], "cap_add": h["CapAdd"], "security": h["SecurityOpt"],
            "read_only": h["ReadonlyRootfs"], "tmpfs": h.get("Tmpfs"), "memory": h["Memory"], "pids": h["PidsLimit"],
            "cpus": h["NanoCpus"], "network_mode": h["NetworkMode"].split(":")[0].split("-ingress")[0].rsplit("-", 1)[0], "env": env,
            "mounts": sorted((m["Destination"], m["RW"]) for m in a["Mounts"]), "sysctls": h.get("Sysctls"),
            "ports": sorted(h.get("PortBindings") or {}), "image": c["Image"]}


def test_a_pooled_kernel_is_exactly_a_cold_kernel(start_kernel, docker_client, testnet):
    cold = start_kernel(policy={"allow_domains": ALLOW}, settings={"pool_size": 0})
    warm_up = start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)  # fills the pool
    assert _wait(_pool_ready), "the pool did not fill"
    pooled = start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    assert pooled.km.provisioner._pod_id, "the second pooled start should have claimed a pool pod"
    assert "pool claim" in pooled.km.provisioner.pod.timings
    for role in ("kernel", "proxy"):
        one = [c for c in sandbox.pod_containers(cold.kernel_id) if c.labels[naming.ROLE] == role][0]
        other = [c for c in sandbox.pod_containers(pooled.kernel_id) if c.labels[naming.ROLE] == role][0]
        a, b = _config(one), _config(other)
        if role == "proxy":
            a.pop("ports"), b.pop("ports")  # each pod publishes its own kernel's ports
        assert a == b, role
    mark = testnet.mark()
    res = pooled.probe("""
        import json, requests
        out = {}
        for host in ("allowed.test", "blocked.test"):
            try:
                out[host] = requests.get(f"http://{host}/", timeout=5).status_code
            except requests.RequestException as e:
                out[host] = type(e).__name__
        print(json.dumps(out))
    """)
    assert res["allowed.test"] == 200 and res["blocked.test"] != 200, res
    assert testnet.web_hits("blocked.test", since=mark) == []
    assert warm_up.kernel_id != pooled.kernel_id


def test_a_pool_pod_allows_nothing_until_claimed(start_kernel, docker_client, testnet):
    start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    assert _wait(_pool_ready), "the pool did not fill"
    proxy = _ready_pool_proxies(docker_client)[0]
    mark = testnet.mark()
    ask = ("import socket,struct; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3);"
           "q=struct.pack('!HHHHHH',7,0x100,1,0,0,0)+b'\\x07allowed\\x04test\\x00'+struct.pack('!HH',1,1);"
           "s.sendto(q,('127.0.0.1',5353)); r=s.recv(512); print(r[3] & 15, struct.unpack('!H', r[6:8])[0])")
    rcode, answers = proxy.exec_run(["python3", "-c", ask], user="proxy").output.decode().split()
    assert answers == "0" and rcode != "0"  # refused: the deny-all policy
    fetch = proxy.exec_run(["python3", "-c", "import urllib.request as u; "
                            "p=u.ProxyHandler({'http':'http://127.0.0.1:3128'}); "
                            "print(u.build_opener(p).open('http://allowed.test/', timeout=5).status)"], user="proxy")
    assert fetch.exit_code != 0 and b"403" in fetch.output
    assert testnet.web_hits("allowed.test", since=mark) == []


def test_a_pool_pod_is_never_reused(start_kernel, docker_client):
    first = start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    assert _wait(_pool_ready)
    second = start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    pod_id = second.km.provisioner._pod_id
    proxy_id = second.km.provisioner.pod.proxy_id
    second.shutdown()
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(pod_id)) == []
    assert _wait(_pool_ready)
    third = start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    assert third.km.provisioner.pod.proxy_id != proxy_id and third.km.provisioner._pod_id != pod_id
    assert first.km.is_alive()


SERVER = """
import json, os, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from awf_kernel.sandbox.pool import POOL
ksm = KernelSpecManager(kernel_dirs=[sys.argv[1]])
km = KernelManager(kernel_name=sys.argv[2], kernel_spec_manager=ksm)
km.start_kernel(env={"AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})})
print(km.kernel_id, f"{os.uname().nodename}:{os.getpid()}", flush=True)
deadline = time.monotonic() + 60
while not any(POOL._ready.values()) and time.monotonic() < deadline:
    time.sleep(0.2)
print("filled" if any(POOL._ready.values()) else "empty", flush=True)
if sys.argv[3] == "crash":
    os._exit(0)        # the server dies without shutting its kernel down
km.shutdown_kernel()   # a server that stops: its kernels, then (at exit) its pool
"""


def _pooled_spec(spec_dir) -> str:
    from tests.integration.conftest import _spec_config
    from awf_kernel import kernelspec
    name = "awf-python-pooled"
    kernelspec.install(prefix=str(spec_dir.parent.parent.parent), name=name,
                       settings={**_spec_config(spec_dir), "pool_size": 1})
    return name


def test_a_stopping_server_removes_its_pool(spec_dir, docker_client):
    name = _pooled_spec(spec_dir)
    proc = subprocess.run([sys.executable, "-c", SERVER, str(spec_dir), name, "stop"],
                          capture_output=True, text=True, timeout=180)
    kid, server = proc.stdout.split()[:2]
    assert "filled" in proc.stdout, proc.stderr
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(server=server)) == []
    assert docker_client.networks.list(filters=naming.kernel_filter(server=server)) == []


def test_gc_collects_the_pool_of_a_dead_server(spec_dir, docker_client, capsys):
    name = _pooled_spec(spec_dir)
    proc = subprocess.run([sys.executable, "-c", SERVER, str(spec_dir), name, "crash"],
                          capture_output=True, text=True, timeout=180)
    kid, server = proc.stdout.split()[:2]
    assert "filled" in proc.stdout, proc.stderr
    left = docker_client.containers.list(all=True, filters=naming.kernel_filter(server=server))
    assert any(c.labels.get(naming.POOL) for c in left) and any(
        c.labels[naming.KERNEL_ID] == kid for c in left)
    assert main(["gc"]) == 0
    out = capsys.readouterr().out
    assert "an unclaimed pool pod whose Jupyter server is gone" in out and kid in out
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(server=server)) == []
    assert docker_client.networks.list(filters=naming.kernel_filter(server=server)) == []


def test_gc_leaves_a_live_servers_pool_alone(start_kernel, docker_client, capsys):
    start_kernel(policy={"allow_domains": ALLOW}, settings=POOLED)
    assert _wait(_pool_ready)
    ready = {c.id for c in _ready_pool_proxies(docker_client)}
    assert main(["gc"]) == 0
    assert ready <= {c.id for c in docker_client.containers.list(all=True)}
