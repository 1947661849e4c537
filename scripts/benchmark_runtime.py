"""A sandboxed kernel under gVisor beside the default runtime (issue 12's figures),
measured side by side in the same run, in real pods against the test internet.

    python3 scripts/benchmark_runtime.py [--runtime runsc] [--runs 5] [--json FILE]

scripts/benchmark.py reports the start and execute figures under `runsc` beside
the default runtime and the local kernel in its own run (its `--runtime`); this
script adds, once per runtime, a workload cell of system-call-heavy loops (stat,
small files, subprocesses, socketpairs), HTTP through the pod's proxy and a
pure-Python loop, with cold starts (no warm pool). For each runtime (the
engine's default, then `--runtime`): kernel start to the first execute reply
and the execute round trip, measured as scripts/benchmark.py measures them,
then the workload. Prints figure | default | runtime | ratio. The runtime must
be one the provisioner accepts (docs/architecture.md, "The kernel under
gVisor"). Traffic goes only to the test
internet this script creates; every kernel, pod and network it makes is removed
at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import signal
import sys
import tempfile
from collections import defaultdict

import docker
from jupyter_client.kernelspec import KernelSpecManager

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import benchmark as bench  # noqa: E402 - scripts/benchmark.py: its kernels, timings, cleanup and checks
from benchmark import kernelspec, med, tf  # noqa: E402

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


FIGURES = (("start to first reply (s)", "start to first reply"), ("execute round trip (ms)", "execute round trip (ms)"))


def rows(results: dict, work: dict, other: str) -> list[tuple[str, float | None, float | None]]:
    base, alt = results["default"], results[other]
    out = [(figure, med(base[k]), med(alt[k])) for figure, k in FIGURES]
    out += [(k, v, work[other][k]) for k, v in work["default"].items()]
    return out


def render(results: dict, work: dict, other: str) -> str:
    lines = [f"{'figure':42s} {'default':>9s} {other:>9s} {'ratio':>6s}"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for k, a, b in rows(results, work, other):
        lines.append(f"{k:42s} {f(a):>9s} {f(b):>9s} {f'{b / a:.1f}' if a and b is not None else '-':>6s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default=bench.GVISOR)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    client = docker.from_env()
    try:  # refused or missing: say so before anything is made
        bench.runtime_choice(args.runtime, client.info(), True)
    except bench.AWFError as exc:
        print(f"--runtime {args.runtime}: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, bench._on_signal)
    results: dict = {"default": defaultdict(list), args.runtime: defaultdict(list)}
    work: dict = {}
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(tf.running_testnet(client))
        prefix = stack.enter_context(tempfile.TemporaryDirectory(prefix="awf-bench-rt-", ignore_cleanup_errors=True))
        for label, rt in (("default", ""), (args.runtime, args.runtime)):
            kernelspec.install(prefix=prefix, name=f"awf-{label}", settings=bench.internal_settings(
                net, pool_size=0, audit_dir=f"{prefix}/audit", runtime=rt))
        stack.callback(bench.cleanup, client)  # kernels and pods go before the network they use
        ksm = KernelSpecManager(kernel_dirs=[f"{prefix}/share/jupyter/kernels"])
        env = {"LANG": "C.UTF-8", "AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})}
        for i in range(args.runs):
            for label in (("default", args.runtime) if i % 2 == 0 else (args.runtime, "default")):
                print(f"run {i + 1}/{args.runs}: {label} ...", file=sys.stderr, flush=True)
                km, kc = bench.start_and_round_trip(f"awf-{label}", ksm, env, results[label], 60)
                if label not in work:
                    work[label] = json.loads(bench.run(kc, WORKLOAD, timeout=900).strip().splitlines()[-1])
                bench.shutdown(km, kc)
                bench.wait_removals(60)
    print(render(results, work, args.runtime))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"samples": results, "work": work}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
