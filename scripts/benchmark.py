"""Speed and memory of a sandboxed kernel against a plain local ipykernel,
measured side by side in the same run on the same machine (issue 9's figures).

    python3 scripts/benchmark.py [--runs 5] [--pool-size N] [--skip-concurrent] [--quick]
                                 [--runtime NAME|none] [--json [FILE]] [--markdown FILE]

Every figure is printed as figure | local | awf | ratio | goal | met?, then
the breakdowns of a start, a restart and a shutdown (jupyter_client's steps and
the pod's), the kernel's import time and the ten-at-once details. `local` is the
`python3` kernel spec started by jupyter_client's LocalProvisioner; `awf` is the
`awf-python` spec installed into a temporary prefix, once per egress network:

  bridge    the default: the proxy on Docker's `bridge`, reaching a test host
            BEYOND the Docker host (tests/integration/testnet_fixtures.py
            `running_beyond_host`, needs root and iproute2; without it the
            bridge figures are start/restart/shutdown only)
  internal  the proxy on the test internet's own `--internal` network, with
            the per-kernel ingress network a locked-down site gets
  runtime   as internal, the kernel container under `--runtime` (default:
            runsc, when the engine has it registered and the provisioner
            accepts it): start to first execute reply and the execute round
            trip, beside the engine's default runtime and the local kernel

Traffic goes only to the test internets this script creates (tests/testnet:
`allowed.test` and its address). Every kernel, pod and network it makes is
removed at the end, also after an error, Ctrl-C or SIGTERM. docs/performance.md
explains each figure and holds a run's results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import docker
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from awf_kernel import kernelspec, naming, runtime  # noqa: E402
from awf_kernel.errors import AWFError  # noqa: E402
from awf_kernel.provisioner import AWFProvisioner  # noqa: E402
from awf_kernel.sandbox import docker as sandbox  # noqa: E402
from tests.integration import testnet_fixtures as tf  # noqa: E402

MB = 10**6
MIB = 2**20
DOWNLOAD_BYTES = 100 * MB
CONCURRENT = 10
READY_TIMEOUT = 120
SETUPS = ("local", "bridge", "internal")  # local = plain ipykernel; the others are awf pods
RUNTIME = "runtime"  # the samples of awf pods on the internal network under --runtime (e.g. runsc)
GVISOR = "runsc"  # --runtime's default, when the engine and the provisioner accept it
NOOP = lambda msg: None  # noqa: E731

# Run inside a kernel. PROXIED: the sandbox's own way out (HTTP_PROXY, set in
# the pod); direct: no proxy at all, straight to the test host's address.
HTTP_GET = """
import json, ssl, time, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE  # self-signed
handlers = [urllib.request.HTTPSHandler(context=ctx)]
if not {proxied}:
    handlers.append(urllib.request.ProxyHandler({{}}))
opener = urllib.request.build_opener(*handlers)
lat = []
for i in range({n} + 3):
    t = time.perf_counter()
    with opener.open("{scheme}://{host}/", timeout=10) as r:
        r.read()
    lat.append(time.perf_counter() - t)
print(json.dumps(lat[3:]))
"""
DOWNLOAD = """
import json, ssl, time, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE  # self-signed
handlers = [urllib.request.HTTPSHandler(context=ctx)]
if not {proxied}:
    handlers.append(urllib.request.ProxyHandler({{}}))
opener = urllib.request.build_opener(*handlers)
buf = bytearray(1 << 20)
n = 0
t = time.perf_counter()
with opener.open("{scheme}://{host}/bytes/{size}", timeout=300) as r:
    while True:
        k = r.readinto(buf)
        if not k:
            break
        n += k
print(json.dumps([n, time.perf_counter() - t]))
"""
# The restart with a changed policy adds this name (the test DNS answers *.allowed.test):
# it resolves in the pod only once the new policy is in force.
NEW_NAME = "api.allowed.test"
RESOLVES = """
import socket
try:
    socket.gethostbyname("{name}")
    print("yes")
except OSError:
    print("no")
"""
IMPORT = "import time; t = time.perf_counter(); import ipykernel.kernelapp; print(time.perf_counter() - t)"


# --- what this run made, so that it can all be removed -------------------------------------

SERVER = f"{socket.gethostname()}:{os.getpid()}"  # the server label the provisioner puts on our pods
LIVE: list = []            # kernel managers not yet shut down
LOCAL_PIDS: set[int] = set()
CONTAINERS: set[str] = set()  # our own helper containers (the import timing)


class Interrupted(KeyboardInterrupt):
    pass


def _on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


def cleanup(client) -> list[str]:
    """Shut down every kernel still running, then remove whatever pod, pool pod
    or network still carries this process's server label, and our helpers.
    A second Ctrl-C (or SIGTERM) while it runs is ignored: it would leave things behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return _cleanup(client)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cleanup(client) -> list[str]:
    notes = []
    for km in list(LIVE):
        try:
            if isinstance(km, AsyncKernelManager):
                asyncio.run(km.shutdown_kernel(now=True))
            else:
                km.shutdown_kernel(now=True)
        except Exception as exc:  # noqa: BLE001 - the label sweep below still runs
            notes.append(f"shutdown of kernel {km.kernel_id}: {type(exc).__name__}: {exc}")
        LIVE.remove(km)
    with contextlib.suppress(Exception):
        wait_removals(60)  # the pods of kernels shut down in the background
    pool = _pool()
    if pool is not None:  # the warm pool's unclaimed pods, by its own hand (as a server does at exit)
        try:
            pool.close()
        except Exception as exc:  # noqa: BLE001 - the label sweep below still runs
            notes.append(f"closing the warm pool: {type(exc).__name__}: {exc}")
    kids = set()
    try:
        selected = naming.kernel_filter(server=SERVER)
        kids |= {c.labels.get(naming.KERNEL_ID, "") for c in client.containers.list(all=True, filters=selected)}
        kids |= {(n.attrs.get("Labels") or {}).get(naming.KERNEL_ID, "")
                 for n in client.networks.list(filters=selected)}
        for kid in sorted(k for k in kids if k):
            sandbox.remove_pod(kid)
        if kids:
            notes.append(f"removed {len(kids)} leftover pod(s) labelled {naming.SERVER}={SERVER}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"label sweep: {type(exc).__name__}: {exc}")
    for cid in list(CONTAINERS):
        with contextlib.suppress(Exception):
            client.containers.get(cid).remove(force=True)
        CONTAINERS.discard(cid)
    for pid in list(LOCAL_PIDS):
        with contextlib.suppress(OSError):
            if "ipykernel" in pathlib.Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)
                notes.append(f"killed local kernel {pid}")
        LOCAL_PIDS.discard(pid)
    return notes


def _pool():
    """The process-wide warm pool of awf_kernel.sandbox.pool, if this version has one."""
    try:
        from awf_kernel.sandbox import pool
    except ImportError:
        return None
    return getattr(pool, "POOL", None)


POOL_THREAD = "awf-kernel-pool"  # the name of the pool's filler threads


def wait_removals(timeout: float) -> float:
    """Wait until the pods shut-down kernels left to remove in the background are
    gone (sandbox.wait_for_removals, where the provisioner removes them so);
    returns the seconds waited."""
    t = time.perf_counter()
    fn = getattr(sandbox, "wait_for_removals", None)
    if fn is not None:
        fn(timeout)
    return time.perf_counter() - t


def settle(timeout: float) -> None:
    """Before a timed start: the previous kernel's pod removed, the warm pool
    refilled (its filler threads done), as between two users' starts; so no
    figure includes another kernel's cleanup, local ones neither."""
    wait_removals(timeout)
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if not any(th.name.startswith(POOL_THREAD) and th.is_alive() for th in threading.enumerate()):
            break
        time.sleep(0.05)


# --- one kernel ------------------------------------------------------------------------------

# jupyter_client's own steps, timed by wrapping them on the manager instance (its start,
# restart and shutdown call them through `self`): (method, what it is).
START_PHASES = (("_async_pre_start_kernel", "pre_start (awf: pre_launch: policy, ports, files)"),
                ("_async_launch_kernel", "launch_kernel (local: Popen; awf: the pod)"),
                ("_async_post_start_kernel", "post_start (control channel, restarter)"))
STOP_PHASES = (("_async_interrupt_kernel", "interrupt"),
               ("_async_request_shutdown", "shutdown request"),
               ("_async_finish_shutdown", "finish_shutdown (wait until the kernel has stopped)"),
               ("_async_cleanup_resources", "cleanup_resources (awf: remove the pod)"))


def time_phases(km) -> dict[str, float]:
    """Seconds spent in each of jupyter_client's steps (START_PHASES, STOP_PHASES)
    since the returned dict was last cleared."""
    spent: dict[str, float] = defaultdict(float)
    for name, _ in START_PHASES + STOP_PHASES:
        fn = getattr(km, name, None)
        if fn is None or not asyncio.iscoroutinefunction(fn):
            continue

        async def timed(*a, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            try:
                return await _fn(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t

        setattr(km, name, timed)
    return spent


def quiet(name: str) -> dict:
    """A local kernel's own output (its TCP warning) stays off the report."""
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if name == "python3" else {}


def start(name: str, ksm, env) -> tuple[KernelManager, object, dict]:
    """Start a kernel and time it up to its first execute reply."""
    t0 = time.perf_counter()
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    phases = km.bench_phases = time_phases(km)
    LIVE.append(km)
    km.start_kernel(env=env, **quiet(name))
    t1 = time.perf_counter()
    if getattr(km.provisioner, "pid", None):
        LOCAL_PIDS.add(km.provisioner.pid)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    t2 = time.perf_counter()
    reply = kc.execute_interactive("1", timeout=60, output_hook=NOOP)
    t3 = time.perf_counter()
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"first execute in {name} failed: {reply['content']}")
    rec = {"start to first reply": t3 - t0, "start_kernel call": t1 - t0, "wait_for_ready": t2 - t1,
           "first execute": t3 - t2, "pod": pod_timings(km), "phases": dict(phases)}
    return km, kc, rec


def start_and_round_trip(name: str, ksm, env, r, settle_s: float) -> tuple[KernelManager, object]:
    """Once the machine has settled: a timed start to the first execute reply,
    then (settled again: the pool's refill after a claim is in neither) the
    execute round trip; recorded in r, one setup's samples. The running kernel
    and its client, to measure more or shut down (scripts/benchmark_runtime.py too)."""
    settle(settle_s)
    km, kc, rec = start(name, ksm, env)
    for k in ("start to first reply", "start_kernel call", "wait_for_ready", "first execute"):
        r[k].append(rec[k])
    r["pod timings"].append(rec["pod"])
    r["start phases"].append(rec["phases"])
    settle(settle_s)
    r["execute round trip (ms)"].append(round_trip(kc, 30) * 1000)
    return km, kc


def pod_timings(km) -> dict[str, float]:
    pod = getattr(km.provisioner, "pod", None)
    return dict(getattr(pod, "timings", None) or {})


def run(kc, code: str, timeout: float = 600) -> str:
    out, err = [], []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            err.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    if err:
        raise RuntimeError("kernel code failed: " + "; ".join(err))
    return "".join(out)


def round_trip(kc, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        kc.execute_interactive("x = 1", timeout=30, output_hook=NOOP)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def http_get(kc, host: str, proxied: bool, n: int, scheme: str = "http") -> list[float]:
    """ms of n GETs, each on a new connection (https: a TLS handshake each, SNI = the name)."""
    code = HTTP_GET.format(host=host, proxied=proxied, n=n, scheme=scheme)
    return [s * 1000 for s in json.loads(run(kc, code).strip())]


def download(kc, host: str, proxied: bool, scheme: str = "http") -> float:
    """MB/s of one DOWNLOAD_BYTES download."""
    code = DOWNLOAD.format(host=host, proxied=proxied, size=DOWNLOAD_BYTES, scheme=scheme)
    n, seconds = json.loads(run(kc, code).strip())
    if n != DOWNLOAD_BYTES:
        raise RuntimeError(f"download from {host} got {n} bytes, not {DOWNLOAD_BYTES}")
    return n / MB / seconds


def restart(km, kc, **kw) -> dict:
    """restart_kernel (kw: launch arguments to change, e.g. a new env), timed."""
    km.bench_phases.clear()
    t0 = time.perf_counter()
    km.restart_kernel(now=False, **kw)
    t1 = time.perf_counter()
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    t2 = time.perf_counter()
    kc.execute_interactive("1", timeout=60, output_hook=NOOP)
    t3 = time.perf_counter()
    if getattr(km.provisioner, "pid", None):
        LOCAL_PIDS.add(km.provisioner.pid)
    return {"restart": t2 - t0, "restart_kernel call": t1 - t0, "restart wait_for_ready": t2 - t1,
            "restart to first reply": t3 - t0, "restart pod": pod_timings(km),
            "restart phases": dict(km.bench_phases)}


def shutdown(km, kc) -> tuple[float, dict]:
    kc.stop_channels()
    km.bench_phases.clear()
    t = time.perf_counter()
    km.shutdown_kernel()
    dt = time.perf_counter() - t
    LIVE.remove(km)
    return dt, dict(km.bench_phases)


# --- memory --------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, str]:
    out = {}
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_mib(pid: int) -> float:
    v = _status(pid).get("VmRSS", "0 kB").split()[0]
    return int(v) / 1024


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages split between the processes sharing them."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            ppid = _status(int(d.name)).get("PPid")
            if ppid and ppid.isdigit():
                children[int(ppid)].append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def local_memory(km) -> dict:
    pids = process_tree(km.provisioner.pid)
    return {"rss_mib": sum(rss_mib(p) for p in pids),
            "processes": {f"{_status(p).get('Name', '?')}[{p}]": rss_mib(p) for p in pids}}


def container_memory(client, cid: str) -> dict:
    """Three views of a container's resident memory: the sum of VmRSS over its
    processes (host pids from `docker top`, read in /proc: counts shared library
    pages once per process, so it errs high), the sum of their PSS (shared pages
    split between the processes, also other pods', sharing them), and the cgroup's
    usage minus its page cache (`total_cache`/`cache` on cgroup v1, `file` on v2)."""
    top = client.api.top(cid)
    col = top["Titles"].index("PID")
    procs, pss = {}, []
    for row in top["Processes"] or []:
        pid = int(row[col])
        procs[f"{_status(pid).get('Name', '?')}[{pid}]"] = rss_mib(pid)
        pss.append(pss_mib(pid))
    stats = client.api.stats(cid, stream=False, one_shot=True)["memory_stats"]
    s = stats.get("stats") or {}
    cache = s.get("total_cache", s.get("cache", s.get("file", 0)))
    return {"rss_mib": sum(procs.values()), "processes": procs,
            "pss_mib": None if None in pss else sum(pss),
            "cgroup_minus_cache_mib": (stats.get("usage", 0) - cache) / MIB}


def pod_memory(client, km) -> dict:
    pod = km.provisioner.pod
    return {"proxy": container_memory(client, pod.proxy_id),
            "kernel": container_memory(client, pod.kernel_id_container)}


# --- import time of the kernel ---------------------------------------------------------------

def import_time_local() -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def import_time_image(client, image: str, uid: int) -> tuple[float, float]:
    """(seconds to import ipykernel.kernelapp inside the kernel image, run as the
    kernel runs: read-only, unprivileged, 1 CPU, no network; wall time of the
    whole `docker run`)."""
    t = time.perf_counter()
    c = client.containers.create(image, entrypoint=["python3", "-c", IMPORT], user=f"{uid}:{uid}",
                                 read_only=True, tmpfs={"/tmp": "mode=1777"}, environment={"HOME": "/tmp"},
                                 network_disabled=True, nano_cpus=10**9, cap_drop=["ALL"],
                                 labels={tf.LABEL: "true", "awf-kernel.benchmark": SERVER})
    CONTAINERS.add(c.id)
    try:
        c.start()
        status = c.wait(timeout=120)["StatusCode"]
        out = c.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        c.remove(force=True)
        CONTAINERS.discard(c.id)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"import in {image} failed:\n{out}")
    return float(out.strip().splitlines()[-1]), wall


def importtime_top(cmd: list[str], top: int = 6) -> list[tuple[str, float]]:
    """Where `import ipykernel.kernelapp` spends its time (-X importtime): the
    self time of every module summed by top-level package, slowest first, in s."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    by_package: dict[str, float] = defaultdict(float)
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            by_package[m.group(2).split(".")[0]] += int(m.group(1)) / 1e6
    return sorted(by_package.items(), key=lambda r: -r[1])[:top]


def diagnose(km) -> dict:
    """What the engine says about a failed kernel's pod: each container's state and last log lines."""
    pod = getattr(km.provisioner, "pod", None)
    out: dict = {}
    if pod is None:
        return out
    client = docker.from_env()
    for role, cid in (("kernel", pod.kernel_id_container), ("proxy", pod.proxy_id)):
        try:
            c = client.containers.get(cid)
            st = c.attrs["State"]
            out[role] = {k: st.get(k) for k in ("Status", "ExitCode", "OOMKilled", "Error", "StartedAt", "FinishedAt")}
            out[role]["logs"] = c.logs(tail=5).decode(errors="replace")[-800:]
        except Exception as exc:  # noqa: BLE001 - a diagnosis, best effort
            out[role] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# --- ten at once -----------------------------------------------------------------------------

async def concurrent_starts(name: str, ksm, env, n: int) -> dict:
    """Start n kernels at once (asyncio, AsyncKernelManager), each up to its
    first execute reply; then shut them all down at once."""
    kms: list[AsyncKernelManager] = []

    async def one() -> dict:
        t0 = time.perf_counter()
        km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm)
        kms.append(km)
        LIVE.append(km)
        kc = None
        try:
            await km.start_kernel(env=env, **quiet(name))
            if getattr(km.provisioner, "pid", None):
                LOCAL_PIDS.add(km.provisioner.pid)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=READY_TIMEOUT)
            reply = await kc.execute_interactive("1", timeout=60, output_hook=NOOP)
            ok = reply["content"]["status"] == "ok"
            return {"ok": ok, "seconds": time.perf_counter() - t0, "pod": pod_timings(km)}
        except Exception as exc:  # noqa: BLE001 - a failed start is a figure, not a crash
            return {"ok": False, "seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}",
                    "pod": await asyncio.to_thread(diagnose, km)}
        finally:
            if kc is not None:
                kc.stop_channels()

    async def stop(km) -> None:
        try:
            await km.shutdown_kernel()
        finally:
            LIVE.remove(km)

    t = time.perf_counter()
    try:
        kernels = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t
    finally:
        t_stop = time.perf_counter()
        stops = await asyncio.gather(*(stop(km) for km in kms), return_exceptions=True)
        stop_wall = time.perf_counter() - t_stop
    return {"kernels": kernels, "total": wall, "slowest": max(k["seconds"] for k in kernels),
            "failed": sum(not k["ok"] for k in kernels), "shutdown_all": stop_wall,
            "shutdown_errors": [f"{type(e).__name__}: {e}" for e in stops if isinstance(e, BaseException)]}


# --- the report --------------------------------------------------------------------------------

def med(xs) -> float | None:
    xs = [x for x in xs or [] if x is not None]
    return statistics.median(xs) if xs else None


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, figure: str, local, awf, goal: str = "", kind: str = "ratio", limit: float | None = None,
            fmt: str = "{:.3f}", ratio: str = "x") -> None:
        """kind: ratio (awf/local <= limit), max (awf <= limit), delta (awf - local <= limit),
        min_pct (awf/local >= limit), count (awf == limit), info (no goal). A figure with
        neither value (not measured in this run) is left out."""
        if local is None and awf is None:
            return
        r = None
        if isinstance(local, (int, float)) and isinstance(awf, (int, float)) and local:
            r = awf / local
        met = None
        if awf is not None:
            if kind == "ratio" and r is not None:
                met = r <= limit
            elif kind == "max":
                met = awf <= limit
            elif kind == "delta" and local is not None:
                met = awf - local <= limit
            elif kind == "min_pct" and r is not None:
                met = r >= limit
            elif kind == "count":
                met = awf == limit and (local is None or local == limit)
        self.rows.append({"figure": figure, "local": local, "awf": awf, "ratio": r, "goal": goal,
                          "met": met, "fmt": fmt, "ratio_fmt": ratio})

    def text(self) -> str:
        lines = self.cells()
        head = ("figure", "local", "awf", "ratio", "goal", "met?")
        w = [max(len(x[i]) for x in [head, *lines]) for i in range(6)]
        fmt_line = lambda x: "  ".join(  # noqa: E731
            (x[i].ljust(w[i]) if i in (0, 4) else x[i].rjust(w[i])) for i in range(6)).rstrip()
        return "\n".join([fmt_line(head), "  ".join("-" * n for n in w), *map(fmt_line, lines)])

    def cells(self) -> list[tuple[str, ...]]:
        def cell(v, fmt):
            if v is None:
                return "-"
            return fmt.format(v) if isinstance(v, (int, float)) else str(v)

        return [(r["figure"], cell(r["local"], r["fmt"]), cell(r["awf"], r["fmt"]),
                 "-" if r["ratio"] is None else (f"{r['ratio'] * 100:.0f}%" if r["ratio_fmt"] == "%"
                                                 else f"{r['ratio']:.2f}x"),
                 r["goal"] or "-", {True: "yes", False: "NO", None: "-"}[r["met"]]) for r in self.rows]

    def json(self) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("fmt", "ratio_fmt")} for r in self.rows]


def machine() -> dict:
    out = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
           "loadavg_at_start": round(os.getloadavg()[0], 2)}
    with contextlib.suppress(Exception):
        out["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    with contextlib.suppress(Exception):
        v = docker.from_env().version()
        out["docker_server"] = v.get("Version")
    with contextlib.suppress(Exception):
        out["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        out["uncommitted_changes"] = bool(dirty)
    return out


# --- main ---------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="runs of each sequential figure (default 5; 2 with --quick)")
    ap.add_argument("--pool-size", type=int, default=None,
                    help="set the provisioner's `pool_size` in the sandboxed kernel specs (if it has that setting)")
    ap.add_argument("--pool-settle", type=float, default=30.0,
                    help="at most this many seconds waiting, before each timed start, for the warm pool to "
                         "refill and background pod removals to end (default 30)")
    ap.add_argument("--skip-concurrent", action="store_true", help="skip the ten-kernels-at-once figure")
    ap.add_argument("--runtime", metavar="NAME",
                    help=f"also measure start and execute with the kernel container under this Docker runtime "
                         f"(internal network), beside the engine's default; `none`: skip. Default: {GVISOR} when "
                         "the engine has it registered and the provisioner accepts it, else none (with a note)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples: 2 runs, 20 GETs per sample, ten-at-once on the internal network only")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write every raw sample and median as JSON to FILE (`-` or no FILE: stdout, "
                         "and the table goes to stderr)")
    ap.add_argument("--markdown", metavar="FILE",
                    help="also write the tables as Markdown to FILE (what docs/performance.md shows)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: print (and --markdown) the report of an earlier run's --json FILE")
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def runtime_choice(asked: str | None, info: dict, has_setting: bool) -> tuple[str | None, str | None]:
    """Which kernel runtime to measure beside the engine's default: (its name or
    None, a note on why none). asked: None (the default: runsc, when the engine
    has it registered and the provisioner accepts it; else none, with a note),
    "none", or a runtime name, which must be accepted (else AWFError). info:
    `docker info`, as the provisioner's own check reads it."""
    if asked == "none":
        return None, None
    name = asked or GVISOR
    try:
        if not has_setting:
            raise AWFError(f"runtime '{name}': this AWFProvisioner has no `runtime` setting")
        runtime.resolve(name, info)  # the provisioner's own check at kernel start
    except AWFError as exc:
        if asked:
            raise
        return None, f"runtime {name} not measured: {exc.message}"
    return name, None


def internal_settings(net, **extra) -> dict:
    """Kernel spec settings of a pod on the test internet's `--internal` network
    (net: tests/integration/testnet_fixtures.running_testnet), its web host opted
    in as an admin opts in an intranet site."""
    return {"egress_network": net.network, "dns_servers": [net.dns_ip],
            "allow_private_destinations": [f"{net.ips['allowed.test']}/32"], **extra}


def report_from_json(path: str, markdown: str | None) -> int:
    """The text (and Markdown) report of a saved run, rebuilt from its raw samples."""
    result = json.loads(pathlib.Path(path).read_text())
    S = {s: defaultdict(list, result["samples"].get(s, {})) for s in (*SETUPS, RUNTIME)}
    args = argparse.Namespace(**result["args"])
    report = build_report(S, result, args, bool(result.get("pool_size")), {})
    result["samples"] = S
    result["runtime_figures"] = runtime_rows(S, result)
    print(render_text(report, result, args, result.get("notes", [])))
    if markdown:
        pathlib.Path(markdown).write_text(render_markdown(report, result, args, result.get("notes", [])))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return report_from_json(args.from_json, args.markdown)
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(*a):
        print(*a, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    client = docker.from_env()
    notes: list[str] = []
    settings_extra: dict = {}
    info = client.info()
    try:  # a runtime asked for and refused: said before anything is made
        rt_name, why = runtime_choice(args.runtime, info, "runtime" in AWFProvisioner.class_traits(config=True))
    except AWFError as exc:
        say(f"--runtime {args.runtime}: {exc}")
        return 2
    if why:
        notes.append(why)
    setups = SETUPS + ((RUNTIME,) if rt_name else ())
    has_pool = "pool_size" in AWFProvisioner.class_traits(config=True)
    if args.pool_size is not None:
        if has_pool:
            settings_extra["pool_size"] = args.pool_size
        else:
            notes.append(f"--pool-size {args.pool_size} ignored: this AWFProvisioner has no `pool_size` setting")
    # The pool size in effect: the one asked for, else the provisioner's default (None: no pool at all).
    result_pool = settings_extra.get("pool_size", AWFProvisioner().pool_size if has_pool else None)
    pooled = bool(result_pool)
    n_get = 20 if args.quick else 50
    S: dict[str, dict[str, list]] = {s: defaultdict(list) for s in setups}
    result: dict = {"machine": machine(), "args": vars(args), "notes": notes,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "pool_size": result_pool,
                    "kernel_runtime": {"name": rt_name, "default": str(info.get("DefaultRuntime") or "runc")}}
    interrupted = False
    try:
        with contextlib.ExitStack() as stack:
            say("starting the test internet (internal network) ...")
            net = stack.enter_context(tf.running_testnet(client))
            say(f"  {net.network}: allowed.test = {net.ips['allowed.test']}, DNS {net.dns_ip}")
            beyond = None
            try:
                say("starting the test host beyond the Docker host (bridge path) ...")
                beyond = stack.enter_context(tf.running_beyond_host(client))
                say(f"  {beyond.netns}: allowed.test = {beyond.ips['allowed.test']}, DNS {beyond.dns_ip}")
            except Exception as exc:  # noqa: BLE001 - the bridge figures shrink to start/restart/shutdown
                notes.append(f"no beyond host ({type(exc).__name__}: {exc}): bridge HTTP figures skipped, "
                             "bridge start measured with the policy only")
            # Removed last (the proxy's uid owns files in the audit folders: ignore what root-less runs cannot).
            prefix = stack.enter_context(tempfile.TemporaryDirectory(prefix="awf-bench-", ignore_cleanup_errors=True))
            # The benchmark's hundreds of kernels keep their audit trail here, not in the user's.
            settings_extra["audit_dir"] = f"{prefix}/audit"
            # The test internets are private networks: opt their web host in, as an admin opts in an intranet site.
            kernelspec.install(prefix=prefix, name="awf-python", settings=internal_settings(net, **settings_extra))
            if rt_name:  # the same, the kernel container under the runtime measured beside the default
                kernelspec.install(prefix=prefix, name=f"awf-python-{rt_name}",
                                   settings=internal_settings(net, runtime=rt_name, **settings_extra))
            # Without the beyond host, the bridge pods' resolver is pointed at the test DNS on the
            # internal network, which the bridge cannot reach: no name lookup ever leaves the machine.
            kernelspec.install(prefix=prefix, name="awf-python-bridge", settings={
                "egress_network": "bridge", "dns_servers": [beyond.dns_ip if beyond else net.dns_ip],
                "allow_private_destinations": [f"{beyond.ips['allowed.test']}/32"] if beyond else [],
                **settings_extra})
            # Runs first on the way out (LIFO): kernels and pods go before the networks they use.
            stack.callback(lambda: notes.extend(cleanup(client)))
            ksm = KernelSpecManager(kernel_dirs=[f"{prefix}/share/jupyter/kernels"] + KernelSpecManager().kernel_dirs)
            specs = {"local": "python3", "bridge": "awf-python-bridge", "internal": "awf-python",
                     RUNTIME: f"awf-python-{rt_name}"}
            base_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            base_env["LANG"] = "C.UTF-8"
            env = {"local": base_env,
                   "awf": {**base_env, "AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})},
                   "awf changed": {**base_env, "AWF_POLICY": json.dumps({"allow_domains": ["allowed.test",
                                                                                            NEW_NAME]})}}
            hosts = {"internal": net.ips["allowed.test"], "bridge": beyond.ips["allowed.test"] if beyond else None}

            def env_for(setup):
                return env["local"] if setup == "local" else env["awf"]

            say("warm-up: one start of each kind (not counted; it also primes a warm pool) ...")
            for setup in setups:
                km, kc, _ = start(specs[setup], ksm, env_for(setup))
                shutdown(km, kc)

            for i in range(args.runs):
                first = i % len(setups)
                order = setups[first:] + setups[:first]  # rotate, so no setup always runs first
                for setup in order:
                    say(f"run {i + 1}/{args.runs}: {setup if setup != RUNTIME else f'internal, {rt_name}'} ...")
                    r = S[setup]
                    km = kc = None
                    try:
                        km, kc = start_and_round_trip(specs[setup], ksm, env_for(setup), r, args.pool_settle)
                        if setup == RUNTIME:  # start and execute only: the rest are the default runtime's figures
                            dt, phases = shutdown(km, kc)
                            r["shutdown"].append(dt)
                            r["pod removed after shutdown"].append(dt + wait_removals(60))
                            continue
                        mem = local_memory(km) if setup == "local" else pod_memory(client, km)
                        r["memory idle"].append(mem)
                        # HTTP: the local kernel goes straight to each test host's address; a pod by name, proxied.
                        for path in ("internal", "bridge"):
                            if hosts[path] is None or setup not in ("local", path):
                                continue
                            host, proxied = (hosts[path], False) if setup == "local" else ("allowed.test", True)
                            r[f"http get ms {path}"].extend(http_get(kc, host, proxied, n_get))
                            r[f"https get ms {path}"].extend(http_get(kc, host, proxied, n_get, "https"))
                            r[f"download MB/s {path}"].append(download(kc, host, proxied))
                            r[f"https download MB/s {path}"].append(download(kc, host, proxied, "https"))
                        if setup != "local":
                            r["memory after traffic"].append(pod_memory(client, km))
                        settle(args.pool_settle)
                        rr = restart(km, kc)
                        for k, v in rr.items():
                            r[k].append(v)
                        # Again, with the notebook's policy changed: the new policy must be in force.
                        rr = restart(km, kc, env=env_for(setup) if setup == "local" else env["awf changed"])
                        for k, v in rr.items():
                            r["changed policy: " + k].append(v)
                        # (Checked where a test DNS answers: without the beyond host, the bridge has none.)
                        if (setup != "local" and hosts[setup] is not None
                                and run(kc, RESOLVES.format(name=NEW_NAME)).strip() != "yes"):
                            notes.append(f"{setup}: after the restart with a changed policy, {NEW_NAME} "
                                         "did not resolve: the new policy was not in force")
                        dt, phases = shutdown(km, kc)
                        r["shutdown"].append(dt)
                        r["shutdown phases"].append(phases)
                        if setup != "local":  # what shutdown left to do in the background, if anything
                            r["pod removed after shutdown"].append(dt + wait_removals(60))
                    except Exception as exc:  # noqa: BLE001 - one failed kernel is a finding, not the end of the run
                        pod = diagnose(km) if km is not None else {}
                        r["failures"].append({"error": f"{type(exc).__name__}: {exc}", "pod": pod})
                        notes.append(f"run {i + 1}, {setup}: {type(exc).__name__}: {exc}" + "".join(
                            f"; {role} {d.get('Status')} exit {d.get('ExitCode')}: "
                            f"{(d.get('logs') or '').strip()[-200:]!r}" for role, d in pod.items()))
                        say(f"  failed: {type(exc).__name__}: {exc}")
                        if kc is not None:
                            with contextlib.suppress(Exception):
                                kc.stop_channels()
                        if km is not None and km in LIVE:
                            with contextlib.suppress(Exception):
                                km.shutdown_kernel(now=True)
                            LIVE.remove(km)

            say("import time of ipykernel.kernelapp, local and in the kernel image ...")
            image = AWFProvisioner().image
            uid = os.getuid() or 1000
            for _ in range(args.runs):
                S["local"]["import ipykernel.kernelapp"].append(import_time_local())
                inside, wall = import_time_image(client, image, uid)
                S["internal"]["import ipykernel.kernelapp"].append(inside)
                S["internal"]["docker run of the import"].append(wall)
            result["importtime_top"] = {
                "local": importtime_top([sys.executable, "-X", "importtime", "-c", "import ipykernel.kernelapp"]),
                "image": importtime_top(["docker", "run", "--rm", "--network", "none", "--read-only",
                                         "--entrypoint", "python3", "--label", f"{tf.LABEL}=true", image,
                                         "-X", "importtime", "-c", "import ipykernel.kernelapp"]),
            }

            conc: dict = {}
            if not args.skip_concurrent:
                for setup in (("local", "internal") if args.quick else SETUPS):
                    say(f"{CONCURRENT} {setup} kernels at once ...")
                    settle(args.pool_settle)
                    conc[setup] = asyncio.run(concurrent_starts(specs[setup], ksm, env_for(setup), CONCURRENT))
            result["concurrent"] = conc
    except KeyboardInterrupt:
        interrupted = True
    finally:
        notes.extend(cleanup(client))  # anything the stack's own cleanup missed (normally nothing)
    if interrupted:
        say("interrupted: every kernel, pod and network this run made was removed")
        for n in notes:
            say("note: " + n)
        return 130

    result["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    report = build_report(S, result, args, pooled, settings_extra)
    result["figures"] = report.json()
    result["samples"] = {s: dict(v) for s, v in S.items()}
    result["breakdown"] = {what: {label: [{"step": n.strip(), "local": lv, "awf": av} for n, lv, av in fn(S, label)]
                                  for label in breakdown_labels(S, what)}
                           for what, fn in BREAKDOWNS}
    result["runtime_figures"] = runtime_rows(S, result)
    print(render_text(report, result, args, notes), file=out)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(render_markdown(report, result, args, notes))
        print(f"Markdown tables: {args.markdown}", file=out)
    if args.json:
        text = json.dumps(result, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            pathlib.Path(args.json).write_text(text + "\n")
            print(f"\nraw samples and medians: {args.json}", file=out)
    return 0


def mem_med(samples: list[dict], container: str, key: str) -> float | None:
    return med([s[container].get(key) for s in samples]) if samples else None


def build_report(S, result, args, pooled, settings_extra) -> Report:
    rep = Report()
    L, B, Int = S["local"], S["bridge"], S["internal"]
    rt = (result.get("kernel_runtime") or {}).get("name")
    R = S.get(RUNTIME) if rt else None  # the kernel under --runtime; its ratios to the default: runtime_rows
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"start to first execute reply, {label} egress (s)", med(L["start to first reply"]),
                med(a["start to first reply"]), "<= 1.2x", "ratio", 1.2)
    if R is not None:
        rep.add(f"start to first execute reply, internal egress, {rt} (s)", med(L["start to first reply"]),
                med(R["start to first reply"]), "report", "info")
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"restart (restart_kernel + wait_for_ready), {label} (s)", med(L["restart"]),
                med(a["restart"]), "<= 1.2x", "ratio", 1.2)
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"restart with a changed policy, {label} (s)", med(L["changed policy: restart"]),
                med(a["changed policy: restart"]), "<= 1.2x", "ratio", 1.2)
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"shutdown (shutdown_kernel), {label} (s)", med(L["shutdown"]), med(a["shutdown"]),
                "<= 0.3 s", "max", 0.3)
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"kernels that failed during the {args.runs} runs, {label} (start to shutdown)",
                len(L["failures"]), len(a["failures"]), "0 failed", "count", 0, fmt="{:d}")
    if R is not None:
        rep.add(f"kernels that failed during the {args.runs} runs, {rt} (start to shutdown)",
                len(L["failures"]), len(R["failures"]), "0 failed", "count", 0, fmt="{:d}")
    for label, a in (("bridge", B), ("internal", Int)):
        rep.add(f"shutdown until its pod is removed, {label} (s)", None, med(a["pod removed after shutdown"]),
                "report", "info")
    conc = result.get("concurrent") or {}
    for label in ("bridge", "internal"):
        if label not in conc or "local" not in conc:
            continue
        lc, ac = conc["local"], conc[label]
        rep.add(f"{CONCURRENT} at once, {label}: failed (of {CONCURRENT})", lc["failed"], ac["failed"],
                "0 failed", "count", 0, fmt="{:d}")
        rep.add(f"{CONCURRENT} at once, {label}: total until all ready (s)", lc["total"], ac["total"], "report", "info")
        rep.add(f"{CONCURRENT} at once, {label}: slowest kernel (s)", lc["slowest"], ac["slowest"], "report", "info")
    idle, busy = Int["memory idle"], Int["memory after traffic"]  # the bridge pods' are in the JSON
    rep.add("proxy container, idle: sum of its processes' RSS (MiB)", None, mem_med(idle, "proxy", "rss_mib"),
            "<= 25 MiB", "max", 25, fmt="{:.1f}")
    rep.add("proxy container, idle: sum of its processes' PSS (MiB)", None, mem_med(idle, "proxy", "pss_mib"),
            "<= 25 MiB", "max", 25, fmt="{:.1f}")
    rep.add("proxy container, idle: cgroup usage minus page cache (MiB)", None,
            mem_med(idle, "proxy", "cgroup_minus_cache_mib"), "<= 25 MiB", "max", 25, fmt="{:.1f}")
    if busy:
        rep.add("proxy container after the HTTP figures: RSS sum (MiB)", None, mem_med(busy, "proxy", "rss_mib"),
                "<= 25 MiB", "max", 25, fmt="{:.1f}")
    rep.add("kernel RSS: container vs local process, idle (MiB)", med([m["rss_mib"] for m in L["memory idle"]]),
            mem_med(Int["memory idle"], "kernel", "rss_mib"), "report", "info", fmt="{:.1f}")
    for label in ("internal", "bridge"):
        a = S[label]
        if not a[f"http get ms {label}"]:
            continue
        rep.add(f"HTTP GET median, {label} (ms; direct by IP vs proxied by name)", med(L[f"http get ms {label}"]),
                med(a[f"http get ms {label}"]), "<= +1 ms", "delta", 1.0, fmt="{:.2f}")
        rep.add(f"HTTPS GET median (TLS each), {label} (ms)", med(L[f"https get ms {label}"]),
                med(a[f"https get ms {label}"]), "report", "info", fmt="{:.2f}")
        rep.add(f"{DOWNLOAD_BYTES // MB} MB download, {label} (MB/s; direct vs proxied)",
                med(L[f"download MB/s {label}"]), med(a[f"download MB/s {label}"]), ">= 80%", "min_pct", 0.8,
                fmt="{:.0f}", ratio="%")
        rep.add(f"{DOWNLOAD_BYTES // MB} MB download over HTTPS, {label} (MB/s)",
                med(L[f"https download MB/s {label}"]), med(a[f"https download MB/s {label}"]), "report", "info",
                fmt="{:.0f}", ratio="%")
    rep.add("execute round trip (ms)", med(L["execute round trip (ms)"]), med(Int["execute round trip (ms)"]),
            "report", "info", fmt="{:.2f}")
    if R is not None:
        rep.add(f"execute round trip, {rt} (ms)", med(L["execute round trip (ms)"]),
                med(R["execute round trip (ms)"]), "report", "info", fmt="{:.2f}")
    rep.add("import ipykernel.kernelapp (s; local vs kernel image)", med(L["import ipykernel.kernelapp"]),
            med(Int["import ipykernel.kernelapp"]), "report", "info")
    return rep


def _phase_rows(L, a, key: str, phases, pod_key: str | None) -> list[tuple[str, float | None, float | None]]:
    """One row per jupyter_client step; under launch_kernel, the pod's own steps."""
    rows = []
    for method, what in phases:
        rows.append((f"  {what}", med([p.get(method, 0.0) for p in L[key]]),
                     med([p.get(method, 0.0) for p in a[key]])))
        if method == "_async_launch_kernel" and pod_key and a[pod_key] and any(a[pod_key]):
            steps: list[str] = []
            for t in a[pod_key]:
                steps += [k for k in t if k not in steps]
            rows += [(f"    pod: {k}", None, med([t.get(k, 0.0) for t in a[pod_key]])) for k in steps]
            rows.append(("    launch_kernel outside create_pod", None,
                         med([p.get(method, 0.0) - sum(t.values()) for p, t in zip(a[key], a[pod_key])])))
    return rows


def breakdown(S, label: str) -> list[tuple[str, float | None, float | None]]:
    """(step, local median, awf median) of one egress network's start."""
    L, a = S["local"], S[label]
    rows = [("start_kernel call", med(L["start_kernel call"]), med(a["start_kernel call"]))]
    rows += _phase_rows(L, a, "start phases", START_PHASES, "pod timings")
    rows += [("jupyter_client wait_for_ready (kernel boot, ZMQ)", med(L["wait_for_ready"]), med(a["wait_for_ready"])),
             ("first execute reply", med(L["first execute"]), med(a["first execute"])),
             ("= start to first execute reply", med(L["start to first reply"]), med(a["start to first reply"]))]
    return rows


def restart_breakdown(S, label: str, prefix: str = "") -> list[tuple[str, float | None, float | None]]:
    """(step, local median, awf median) of one egress network's restart
    (prefix "changed policy: ": the restart with a changed policy)."""
    L, a = S["local"], S[label]
    k = lambda name: prefix + name  # noqa: E731
    rows = [("restart_kernel call", med(L[k("restart_kernel call")]), med(a[k("restart_kernel call")]))]
    rows += _phase_rows(L, a, k("restart phases"), STOP_PHASES + START_PHASES, k("restart pod"))
    rows += [("wait_for_ready", med(L[k("restart wait_for_ready")]), med(a[k("restart wait_for_ready")])),
             ("= restart", med(L[k("restart")]), med(a[k("restart")])),
             ("restart to first execute reply", med(L[k("restart to first reply")]),
              med(a[k("restart to first reply")]))]
    return rows


def shutdown_breakdown(S, label: str) -> list[tuple[str, float | None, float | None]]:
    L, a = S["local"], S[label]
    return [("shutdown_kernel call", med(L["shutdown"]), med(a["shutdown"])),
            *_phase_rows(L, a, "shutdown phases", STOP_PHASES, None)]


BREAKDOWNS = (("start", breakdown), ("restart", restart_breakdown),
              ("restart with a changed policy", lambda S, x: restart_breakdown(S, x, "changed policy: ")),
              ("shutdown", shutdown_breakdown))


def breakdown_labels(S, what: str) -> list[str]:
    """The awf setups with a column in a breakdown: the egress networks', and
    in the start's, the kernel under --runtime (it is measured up to its execute round trip)."""
    labels = [x for x in ("bridge", "internal") if S[x].get("start to first reply")]
    if what == "start" and (S.get(RUNTIME) or {}).get("start to first reply"):
        labels.append(RUNTIME)
    return labels


def column(label: str, result: dict) -> str:
    """A breakdown column's name: the egress network, or the runtime measured beside the default."""
    if label == RUNTIME:
        return (result.get("kernel_runtime") or {}).get("name") or label
    return label


# The figures under --runtime, beside the engine's default runtime (both on the internal network):
# (figure, sample key, format).
RUNTIME_FIGURES = (("start to first execute reply (s)", "start to first reply", "{:.3f}"),
                   ("execute round trip (ms)", "execute round trip (ms)", "{:.2f}"))


def runtime_rows(S, result: dict) -> list[dict]:
    """Each of RUNTIME_FIGURES: local, awf under the engine's default runtime and
    under --runtime, and the ratios of the latter to the default and to local
    (empty when no runtime was measured)."""
    rt = result.get("kernel_runtime") or {}
    R = S.get(RUNTIME) or {}
    if not rt.get("name") or not R.get("start to first reply"):
        return []
    out = []
    for figure, key, _ in RUNTIME_FIGURES:
        loc, dflt, alt = med(S["local"].get(key)), med(S["internal"].get(key)), med(R.get(key))
        out.append({"figure": figure, "local": loc, "default": dflt, "runtime": alt,
                    "vs_default": alt / dflt if alt is not None and dflt else None,
                    "vs_local": alt / loc if alt is not None and loc else None})
    return out


def runtime_table(result: dict) -> tuple[str, list[str], list[list[str]]]:
    """(caption, header, cells) of the runtime comparison, for the text and Markdown reports."""
    rt = result.get("kernel_runtime") or {}
    name, default = rt.get("name"), rt.get("default") or "default"
    rows = result.get("runtime_figures") or []
    fmts = {f: fmt for f, _, fmt in RUNTIME_FIGURES}
    cell = lambda v, fmt: "-" if v is None else fmt.format(v)  # noqa: E731
    caption = f"kernel runtime: {name} beside the engine's default ({default}), awf on the internal network (medians)"
    head = ["figure", "local", f"awf {default}", f"awf {name}", f"{name}/{default}", f"{name}/local"]
    cells = [[r["figure"], *(cell(r[k], fmts.get(r["figure"], "{:.3f}")) for k in ("local", "default", "runtime")),
              *(cell(r[k], "{:.2f}x") for k in ("vs_default", "vs_local"))] for r in rows]
    return caption, head, cells


def merged_steps(lists: list[list[str]]) -> list[str]:
    """The union of several ordered step lists, each new step placed after its predecessor."""
    out: list[str] = []
    for names in lists:
        prev = None
        for n in names:
            if n not in out:
                out.insert(out.index(prev) + 1 if prev in out else len(out), n)
            prev = n
    return out


def load(m: dict) -> str:
    """The 1-minute load average at the start and the end: how busy the machine was."""
    return f"{m.get('loadavg_at_start', '?')} at the start, {m.get('loadavg_at_end', '?')} at the end"


def pool_line(result: dict) -> str:
    size = result.get("pool_size")
    if size is None:
        return "warm pool: none (this provisioner has no `pool_size` setting)"
    how = "--pool-size" if result["args"].get("pool_size") is not None else "the provisioner's default"
    return f"warm pool: pool_size = {size} ({how})" + ("" if size else ", i.e. every start is cold")


def render_text(report: Report, result: dict, args, notes: list[str]) -> str:
    m = result["machine"]
    S = result["samples"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"awf-kernel benchmark, {result['date']}: median of {args.runs} run(s); commit {m.get('commit', '?')}"
             f"{' (+ uncommitted changes)' if m.get('uncommitted_changes') else ''}; {m.get('nproc')} cores, "
             f"Linux {m.get('kernel')}, Docker {m.get('docker_server', '?')}; load average {load(m)}",
             "local = plain ipykernel (LocalProvisioner, `python3`); awf = sandboxed pod; ratio = awf/local", "",
             report.text(), ""]
    if result.get("runtime_figures"):
        caption, head, cells = runtime_table(result)
        widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]
        lines += [caption + ":", *("  " + "  ".join(x[i].ljust(widths[i]) if i == 0 else x[i].rjust(widths[i])
                                                     for i in range(len(head))) for x in (head, *cells)), ""]
    for what, fn in BREAKDOWNS:
        labels = breakdown_labels(S, what)
        if not labels:
            continue
        rows = {x: fn(S, x) for x in labels}
        names = merged_steps([[r[0] for r in rows[x]] for x in labels])
        w = max(len(n) for n in names)
        lines.append(f"{what} breakdown (medians, s):")
        lines.append(f"  {'':{w}}  {'local':>7}  " + "  ".join(f"{'awf ' + column(x, result):>12}" for x in labels))
        for name in names:
            loc = next((r[1] for x in labels for r in rows[x] if r[0] == name), None)
            vals = [next((f(r[2]) for r in rows[x] if r[0] == name), "-") for x in labels]
            lines.append(f"  {name.ljust(w)}  {f(loc):>7}  " + "  ".join(f"{v:>12}" for v in vals))
        lines.append("")
    imp = S["internal"].get("import ipykernel.kernelapp")
    if imp:
        lines.append(f"kernel image: import ipykernel.kernelapp {med(imp):.3f} s inside (read-only, 1 CPU), "
                     f"`docker run` of it {med(S['internal']['docker run of the import']):.3f} s wall; "
                     f"local {med(S['local']['import ipykernel.kernelapp']):.3f} s")
        for where, rows in (result.get("importtime_top") or {}).items():
            lines.append(f"  import time by package ({where}, s): "
                         + ", ".join(f"{n} {s:.3f}" for n, s in rows))
        lines.append("")
    for label, c in (result.get("concurrent") or {}).items():
        lines.append(f"{CONCURRENT} {label} kernels at once: {CONCURRENT - c['failed']}/{CONCURRENT} ready, total "
                     f"{c['total']:.2f} s, slowest {c['slowest']:.2f} s, all shut down in {c['shutdown_all']:.2f} s"
                     + "".join(f"\n  failed: {k['error']}" + "".join(
                         f"; {role} {d.get('Status')} exit {d.get('ExitCode')}"
                         f"{' OOM' if d.get('OOMKilled') else ''}: {(d.get('logs') or '').strip()[-160:]!r}"
                         for role, d in (k.get("pod") or {}).items()) for k in c["kernels"] if not k["ok"]))
    mem = S["internal"].get("memory idle")
    if mem:
        lines.append("proxy processes (RSS MiB, one idle pod): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in mem[-1]["proxy"]["processes"].items()))
    lines.append(pool_line(result))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def render_markdown(report: Report, result: dict, args, notes: list[str]) -> str:
    m, S = result["machine"], result["samples"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = [f"Run of {result['date']}, commit `{m.get('commit', '?')}`"
           f"{' (with uncommitted changes in the tree)' if m.get('uncommitted_changes') else ''}, "
           f"median of {args.runs} runs; {m.get('nproc')} cores, Linux {m.get('kernel')}, "
           f"Docker {m.get('docker_server', '?')}; load average {load(m)}.", "",
           "| figure | local | awf | ratio | goal | met? |", "|---|--:|--:|--:|---|---|"]
    out += ["| " + " | ".join(c) + " |" for c in report.cells()]
    if result.get("runtime_figures"):
        caption, head, cells = runtime_table(result)
        out += ["", caption[0].upper() + caption[1:] + ":", "", "| " + " | ".join(head) + " |",
                "|---|" + "--:|" * (len(head) - 1), *("| " + " | ".join(c) + " |" for c in cells)]
    for what, fn in BREAKDOWNS:
        labels = breakdown_labels(S, what)
        if not labels:
            continue
        rows = {x: fn(S, x) for x in labels}
        names = merged_steps([[r[0] for r in rows[x]] for x in labels])
        out += ["", f"{what.capitalize()} breakdown (medians, s):", "",
                "| step | local | " + " | ".join(f"awf, {column(x, result)}" for x in labels) + " |",
                "|---|--:|" + "--:|" * len(labels)]
        for name in names:
            loc = next((r[1] for x in labels for r in rows[x] if r[0] == name), None)
            vals = [next((f(r[2]) for r in rows[x] if r[0] == name), "-") for x in labels]
            indent = "&nbsp;" * (len(name) - len(name.lstrip()))
            out.append(f"| {indent}{name.strip()} | {f(loc)} | " + " | ".join(vals) + " |")
    text = render_text(report, result, args, notes)
    extra = [line for line in text.splitlines()
             if line.startswith(("kernel image:", "  import time", "proxy processes", "  failed:", "note:", "pool"))
             or line.startswith("warm pool")
             or (line.startswith(f"{CONCURRENT} ") and "kernels at once" in line)]
    if extra:
        out += ["", "```", *extra, "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
