"""A sandboxed kernel under gVisor beside the default runtime (issue 12's figures),
measured side by side in the same run, in real pods against the test internet.

    python3 scripts/benchmark_runtime.py [--runtime runsc] [--runs 5] [--json FILE]

For each runtime (the engine's default, then `--runtime`): kernel start to the
first execute reply, the execute round trip, and once per runtime a workload
cell of system-call-heavy loops (stat, small files, subprocesses, socketpairs),
HTTP through the pod's proxy and a pure-Python loop. Prints figure | default |
runtime | ratio. The runtime must be one the provisioner accepts (gVisor
registered with --network=host: docs/architecture.md, "The kernel under gVisor").
Traffic goes only to the test internet this script creates; every kernel, pod
and network it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import tempfile
import time

import docker
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from awf_kernel import kernelspec, runtime  # noqa: E402
from awf_kernel.sandbox import docker as sandbox  # noqa: E402
from tests.integration import testnet_fixtures as tf  # noqa: E402

WORKLOAD = r'''
import json, os, socket, subprocess, time
import requests
R = {}
def timed(name, fn):
    t = time.perf_counter(); fn(); R[name] = time.perf_counter() - t
def stat():
    for _ in range(200_000):
        os.stat("/tmp")
def files():
    for i in range(3000):
        with open(f"/tmp/awf-bench-{i}", "w") as f:
            f.write("x" * 100)
        with open(f"/tmp/awf-bench-{i}") as f:
            f.read()
        os.unlink(f"/tmp/awf-bench-{i}")
def spawn():
    for _ in range(30):
        subprocess.run(["true"])
def pairs():
    for _ in range(2000):
        a, b = socket.socketpair(); a.sendall(b"x" * 64); b.recv(64); a.close(); b.close()
def http():
    s = requests.Session()
    for _ in range(50):
        s.get("http://allowed.test/", timeout=10)
def compute():
    x = 0
    for i in range(3_000_000):
        x += i
timed("os.stat x 200k (s)", stat)
timed("small file create/read/unlink x 3k (s)", files)
timed("spawn `true` x 30 (s)", spawn)
timed("socketpair send/recv x 2k (s)", pairs)
timed("HTTP GET through the proxy x 50 (s)", http)
timed("pure Python loop 3M (s)", compute)
print(json.dumps(R))
'''


def quiet(msg) -> None:
    """Output hook that drops the execute results (the default prints them)."""


def measure(name: str, ksm, env: dict, out: dict) -> None:
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    t0 = time.perf_counter()
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        kc.execute_interactive("1", timeout=60, output_hook=quiet)
        out.setdefault("start to first reply (s)", []).append(time.perf_counter() - t0)
        t = time.perf_counter()
        for _ in range(30):
            kc.execute_interactive("1", timeout=60, output_hook=quiet)
        out.setdefault("execute round trip (ms)", []).append((time.perf_counter() - t) / 30 * 1000)
        if "work" not in out:
            msgs: list = []
            kc.execute_interactive(WORKLOAD, timeout=900, output_hook=msgs.append)
            text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
            out["work"] = json.loads(text.strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        sandbox.wait_for_removals()


def rows(results: dict, other: str) -> list[tuple[str, float, float]]:
    base, alt = results["default"], results[other]
    out = [(k, statistics.median(base[k]), statistics.median(alt[k]))
           for k in ("start to first reply (s)", "execute round trip (ms)")]
    out += [(k, v, alt["work"][k]) for k, v in base["work"].items()]
    return out


def render(results: dict, other: str) -> str:
    lines = [f"{'figure':42s} {'default':>9s} {other:>9s} {'ratio':>6s}"]
    for k, a, b in rows(results, other):
        lines.append(f"{k:42s} {a:9.3f} {b:9.3f} {b / a:6.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default="runsc")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    client = docker.from_env()
    runtime.resolve(args.runtime, client.info())  # refused or missing: say so before anything is made
    results: dict = {"default": {}, args.runtime: {}}
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(tf.running_testnet(client))
        prefix = stack.enter_context(tempfile.TemporaryDirectory(prefix="awf-bench-rt-", ignore_cleanup_errors=True))
        for label, rt in (("default", ""), (args.runtime, args.runtime)):
            kernelspec.install(prefix=prefix, name=f"awf-{label}", settings={
                "egress_network": net.network, "dns_servers": [net.dns_ip], "pool_size": 0,
                "audit_dir": f"{prefix}/audit", "runtime": rt,
                "allow_private_destinations": [f"{net.ips['allowed.test']}/32"]})
        ksm = KernelSpecManager(kernel_dirs=[f"{prefix}/share/jupyter/kernels"])
        env = {"LANG": "C.UTF-8", "AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})}
        for i in range(args.runs):
            for label in (("default", args.runtime) if i % 2 == 0 else (args.runtime, "default")):
                print(f"run {i + 1}/{args.runs}: {label} ...", file=sys.stderr, flush=True)
                measure(f"awf-{label}", ksm, env, results[label])
    print(render(results, args.runtime))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
