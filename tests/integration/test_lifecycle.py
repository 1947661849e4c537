"""A sandboxed kernel's life through jupyter_client: start, execute,
interrupt, restart, shutdown, and nothing left behind afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from awf_kernel import naming
from awf_kernel.sandbox import docker as sandbox
from tests.integration.conftest import ALLOW, pod_resources
from tests.integration.gvisor import pod_roles, routed, under_gvisor


def _pod(docker_client, kernel_id):
    """The kernel's pod containers while it runs (a warm pool pod's too)."""
    return sandbox.pod_containers(kernel_id)


def test_start_execute_shutdown_leaves_nothing(start_kernel, docker_client, tmp_path):
    os.chown(tmp_path, 1234, 1234) if os.getuid() == 0 else None  # a user's folder, as root runs CI
    k = start_kernel(policy={"allow_domains": ALLOW}, cwd=str(tmp_path))
    kid = k.kernel_id
    roles = {c.labels[naming.ROLE] for c in _pod(docker_client, kid)}
    assert roles == pod_roles()  # the firewall (and a routed pod's link) step is gone once it ran
    res = k.probe("""
        import json, os
        open("made-by-kernel.txt", "w").write("hi")
        print(json.dumps({"cwd": os.getcwd(), "answer": 6 * 7}))
    """)
    assert res == {"cwd": str(tmp_path), "answer": 42}
    made = tmp_path / "made-by-kernel.txt"
    assert made.read_text() == "hi"  # the notebook's folder, same path
    assert made.stat().st_uid == (1234 if os.getuid() == 0 else os.getuid())  # as the folder's owner
    conn_dir = k.km.provisioner.connection_dir
    assert conn_dir and os.path.isdir(conn_dir)
    k.shutdown()
    assert pod_resources(docker_client, k.km) == ([], [])
    assert not os.path.exists(conn_dir)


def test_ports_are_published_on_loopback_only(kernel, docker_client):
    proxy = [c for c in _pod(docker_client, kernel.kernel_id) if c.labels[naming.ROLE] == "proxy"][0]
    bindings = proxy.attrs["HostConfig"]["PortBindings"]
    assert len(bindings) == 5
    for spec in bindings.values():
        assert [b["HostIp"] for b in spec] == ["127.0.0.1"]
    published = sorted(int(b[0]["HostPort"]) for b in bindings.values())
    ci = kernel.km.get_connection_info()
    assert published == sorted(ci[p] for p in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"))
    assert ci["ip"] == "127.0.0.1"


def test_interrupt_a_running_sleep(kernel):
    msg_id = kernel.kc.execute("import time; time.sleep(60)")
    time.sleep(1.5)
    t = time.monotonic()
    kernel.km.interrupt_kernel()
    # the sleeping cell ends with KeyboardInterrupt well before its 60 s
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=20)
        if msg["msg_type"] == "error":
            assert msg["content"]["ename"] == "KeyboardInterrupt"
            break
    assert time.monotonic() - t < 15
    reply = kernel.kc.get_shell_msg(timeout=20)
    while reply["parent_header"].get("msg_id") != msg_id:  # a late kernel_info reply from wait_for_ready
        assert reply["msg_type"] == "kernel_info_reply", reply
        reply = kernel.kc.get_shell_msg(timeout=20)
    assert reply["content"]["status"] == "error"
    time.sleep(0.5)  # ipykernel aborts requests that arrive while it unwinds the interrupted cell
    assert kernel.probe("import json; print(json.dumps(1 + 1))") == 2  # still alive


def test_restart_keeps_ports_and_rereads_policy(start_kernel, docker_client, testnet, monkeypatch):
    k = start_kernel(policy={"allow_domains": ALLOW})
    before = k.km.get_connection_info()
    old = {c.labels[naming.ROLE]: c.id for c in _pod(docker_client, k.kernel_id)}
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=120)
    after = k.km.get_connection_info()
    for p in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"):
        assert before[p] == after[p]
    new = {c.labels[naming.ROLE]: c.id for c in _pod(docker_client, k.kernel_id)}
    # a new kernel container in the same proxy side (its rules, ports and audit trail are the kernel's)
    assert new["kernel"] != old["kernel"] and new["proxy"] == old["proxy"], (old, new)
    assert set(new) == pod_roles() and new.get("holder") == old.get("holder")  # a routed pod's link is kept
    res = k.probe("""
        import json, requests
        s = requests.Session(); s.trust_env = False
        print(json.dumps(s.get("http://allowed.test/", timeout=10).status_code))
    """)
    assert res == 200  # the policy survived the restart


OTHER_GET = """
    import json, requests
    try:
        print(json.dumps(requests.get("http://other.test/", timeout=10).status_code))
    except requests.RequestException as exc:
        print(json.dumps(type(exc).__name__))
"""


@pytest.mark.parametrize("before,after", [
    (["allowed.test"], ["allowed.test", "other.test"]),   # widened: put in force beside the kernel's start
    (["allowed.test", "other.test"], ["allowed.test"]),   # narrowed: put in force before the kernel starts
])
def test_restart_puts_a_changed_policy_in_force_before_the_first_cell(start_kernel, testnet, before, after):
    """A restart re-reads the policy; whichever way it changed, the new kernel's
    first cell already meets the new policy, judged by what reaches other.test."""
    k = start_kernel(policy={"allow_domains": before})
    assert k.probe(OTHER_GET) == (200 if "other.test" in before else 403)
    env = {**k.km._launch_args["env"], "AWF_POLICY": json.dumps({"allow_domains": after})}
    k.km.restart_kernel(now=False, env=env)
    k.kc.wait_for_ready(timeout=120)
    mark = testnet.mark()
    got = k.probe(OTHER_GET)
    if "other.test" in after:
        assert got == 200 and [h for h in testnet.web_hits("other.test", since=mark) if h.get("event") == "request"]
    else:
        assert got == 403 and testnet.web_hits("other.test", since=mark) == []
    timings = k.km.provisioner.pod.timings
    assert "restart: policy" in timings, timings


def test_five_kernels_at_once(spec_dir, docker_client):
    """Concurrent starts: no fixed names, subnets or ports."""

    async def one():
        km = AsyncKernelManager(kernel_name="awf-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))
        await km.start_kernel(env={"AWF_POLICY": json.dumps({"allow_domains": ALLOW})})
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=180)
            reply = await kc.execute_interactive("x = 1", timeout=60)
            return km.kernel_id, reply["content"]["status"]
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    async def all_five():
        return await asyncio.gather(*(one() for _ in range(5)))

    results = asyncio.run(all_five())
    assert [status for _, status in results] == ["ok"] * 5
    assert len({kid for kid, _ in results}) == 5
    sandbox.wait_for_removals()  # pods go in the background once their kernels ended
    for kid, _ in results:
        assert _pod(docker_client, kid) == []


def test_kernel_environment_is_an_allowlist(start_kernel):
    k = start_kernel(policy={"allow_domains": ALLOW},
                     env={"LANG": "C.UTF-8", "JUPYTERHUB_API_TOKEN": "hub-secret", "AWS_SECRET_ACCESS_KEY": "aws",
                          "JPY_PARENT_PID": "1234", "MY_TOKEN": "x"})
    env = k.probe("import json, os; print(json.dumps(dict(os.environ)))")
    assert "hub-secret" not in json.dumps(env) and "aws" not in env.values()
    assert "JUPYTERHUB_API_TOKEN" not in env and "MY_TOKEN" not in env and "JPY_PARENT_PID" not in env
    assert env["LANG"] == "C.UTF-8"
    # the proxy on the kernel's loopback, or in a routed pod at the far end of its link
    assert env["HTTP_PROXY"] == ("http://169.254.253.1:3128" if routed() else "http://127.0.0.1:3128")


def test_kernel_limits_are_applied(kernel, docker_client):
    c = [c for c in _pod(docker_client, kernel.kernel_id) if c.labels[naming.ROLE] == "kernel"][0]
    hc = c.attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["Memory"] > 0 and hc["PidsLimit"] > 0 and hc["NanoCpus"] > 0
    assert hc["Init"] is True and hc["Privileged"] is False
    assert c.attrs["Config"]["User"] != "0:0"
    res = kernel.probe("""
        import json, os, threading, time
        made = 0
        try:
            for _ in range(2000):
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); made += 1
        except RuntimeError:
            pass
        print(json.dumps(made))
    """, timeout=120)
    # Under gVisor the kernel's threads are tasks of gVisor's own kernel, not host
    # processes: the pids limit bounds only the sandbox's host threads, and the
    # memory limit bounds the rest (measured: a thread bomb under runsc with 64
    # pids / 512m was OOM-killed as a whole, where runc stopped it at 63 threads).
    if not under_gvisor():
        assert res < 2000  # the pids limit stopped the fork bomb


def test_default_bridge_egress_path(start_kernel, docker_client, testnet):
    """The real users' default: the proxy on Docker's `bridge` network publishes
    the ports itself (no private ingress network). Nothing is allowed, so no
    query or connection can leave; the pod must still start, run and refuse."""
    k = start_kernel(policy={}, settings={"egress_network": "bridge", "dns_servers": [testnet.dns_ip]})
    pod = _pod(docker_client, k.kernel_id)
    proxy = [c for c in pod if c.labels[naming.ROLE] == "proxy"][0]
    assert list(proxy.attrs["NetworkSettings"]["Networks"]) == ["bridge"]
    assert pod_resources(docker_client, k.km)[1] == []  # no ingress network on bridge
    gateway = proxy.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    res = k.probe(f"""
        import json, socket, requests
        out = {{"proxied": requests.get("http://blocked.test/", timeout=10).status_code}}
        try:
            socket.getaddrinfo("blocked.test", 80); out["dns"] = "resolved"
        except socket.gaierror:
            out["dns"] = "nxdomain"
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect(("{gateway}", 22)); out["host"] = "connected"
        except OSError as e:
            out["host"] = type(e).__name__
        print(json.dumps(out))
    """)
    assert res == {"proxied": 403, "dns": "nxdomain", "host": "ConnectionRefusedError"}
