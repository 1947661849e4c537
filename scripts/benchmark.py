"""Speed and memory of a sandboxed kernel against a plain local ipykernel,
measured in the same run on the same machine. Prints figures and ratios.

    python3 scripts/benchmark.py [--runs 5]

Traffic goes only to the test internet this script creates (tests/testnet).
"""

from __future__ import annotations

import argparse
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

from awf_kernel import kernelspec, naming  # noqa: E402
from tests.integration.testnet_fixtures import running_testnet  # noqa: E402

FETCH = """
import urllib.request, time
t = time.perf_counter()
for _ in range(20):
    urllib.request.urlopen("http://{host}/", timeout=10).read()
print((time.perf_counter() - t) / 20)
"""


def start(name: str, ksm, env) -> tuple[KernelManager, object, float]:
    t = time.perf_counter()
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    kc.execute_interactive("1", timeout=60, output_hook=lambda m: None)
    return km, kc, time.perf_counter() - t


def run(kc, code: str) -> str:
    out = []
    kc.execute_interactive(code, timeout=120,
                           output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    return "".join(out)


def round_trip(kc, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        kc.execute_interactive("x = 1", timeout=30, output_hook=lambda m: None)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def local_rss(km) -> float:
    pid = km.provisioner.pid
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pod_rss(client, kernel_id: str) -> dict[str, float]:
    out = {}
    for c in client.containers.list(filters=naming.kernel_filter(kernel_id)):
        stats = c.stats(stream=False)
        mem = stats["memory_stats"]
        usage = mem.get("usage", 0) - mem.get("stats", {}).get("inactive_file", 0)
        out[c.labels[naming.ROLE]] = usage / 2**20
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    client = docker.from_env()
    with running_testnet() as net, tempfile.TemporaryDirectory() as prefix:
        # The test internet is a private Docker network: opt its web host in, as an admin opts in an intranet site.
        kernelspec.install(prefix=prefix, settings={"egress_network": net.network, "dns_servers": [net.dns_ip],
                                                    "allow_private_destinations": [f"{net.ips['allowed.test']}/32"]})
        ksm = KernelSpecManager(kernel_dirs=[f"{prefix}/share/jupyter/kernels"] + KernelSpecManager().kernel_dirs)
        policy = {"LANG": "C.UTF-8", "AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})}
        results: dict[str, dict[str, list[float]]] = {"local": {}, "awf": {}}
        for _ in range(args.runs):
            for label, name in (("local", "python3"), ("awf", "awf-python")):
                km, kc, startup = start(name, ksm, policy)
                r = results[label]
                r.setdefault("start to first reply (s)", []).append(startup)
                r.setdefault("execute round trip (ms)", []).append(round_trip(kc) * 1000)
                host = "allowed.test" if label == "awf" else net.ips["allowed.test"]
                r.setdefault("HTTP GET allowed.test (ms)", []).append(float(run(kc, FETCH.format(host=host))) * 1000)
                if label == "local":
                    r.setdefault("memory (MiB)", []).append(local_rss(km))
                else:
                    mem = pod_rss(client, km.kernel_id)
                    r.setdefault("memory (MiB)", []).append(sum(mem.values()))
                    r.setdefault("  of which proxy (MiB)", []).append(mem.get("proxy", 0))
                t = time.perf_counter()
                km.restart_kernel(now=False)
                kc.wait_for_ready(timeout=120)
                r.setdefault("restart (s)", []).append(time.perf_counter() - t)
                kc.stop_channels()
                t = time.perf_counter()
                km.shutdown_kernel()
                r.setdefault("shutdown (s)", []).append(time.perf_counter() - t)
    print(f"median of {args.runs} runs; local = plain ipykernel (LocalProvisioner), awf = sandboxed pod")
    print(f"{'metric':32} {'local':>10} {'awf':>10} {'awf/local':>10}")
    for metric in results["awf"]:
        a = statistics.median(results["awf"][metric])
        loc = results["local"].get(metric)
        if loc:
            lv = statistics.median(loc)
            print(f"{metric:32} {lv:10.3f} {a:10.3f} {a / lv:10.2f}")
        else:
            print(f"{metric:32} {'':>10} {a:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
