"""scripts/benchmark.py's kernel runtime figures (issue 12: start and execute
under runsc beside the default runtime) and scripts/benchmark_runtime.py's
report, on made-up samples and engine info (no Docker, no kernels)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
from collections import defaultdict

import pytest

from awf_kernel.errors import AWFError
from tests.unit.test_benchmark import _samples as all_setups

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"
RUNC = {"runc": {"path": "runc"}}
GVISOR_HOST = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}
GVISOR_NO_NETWORK = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}
KATA = {"kata": {"path": "/usr/bin/kata-runtime"}}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # benchmark_runtime imports `benchmark` by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("benchmark")


@pytest.fixture(scope="module")
def bench_rt(bench):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return _load("benchmark_runtime")
    finally:
        sys.path.remove(str(SCRIPTS))


def info(**runtimes) -> dict:
    return {"Runtimes": {**RUNC, **runtimes}, "DefaultRuntime": "runc"}


def test_runsc_is_measured_by_default_when_registered_with_the_host_network(bench):
    assert bench.runtime_choice(None, info(**GVISOR_HOST), True) == ("runsc", None)
    assert bench.runtime_choice("none", info(**GVISOR_HOST), True) == (None, None)


@pytest.mark.parametrize("engine, has_setting, why", [
    (info(), True, "not registered"),
    (info(**GVISOR_NO_NETWORK), True, "--network=none"),
    (info(**GVISOR_HOST), False, "no `runtime` setting"),
])
def test_by_default_a_runsc_the_provisioner_would_refuse_is_a_note_not_an_error(bench, engine, has_setting, why):
    name, note = bench.runtime_choice(None, engine, has_setting)
    assert name is None and note.startswith("runtime runsc not measured") and why in note


def test_a_runtime_asked_for_and_refused_is_an_error(bench):
    with pytest.raises(AWFError, match="--network=none"):
        bench.runtime_choice("runsc", info(**GVISOR_NO_NETWORK), True)
    with pytest.raises(AWFError, match="not a runtime awf-kernel knows"):
        bench.runtime_choice("kata", info(**KATA), True)
    with pytest.raises(AWFError, match="not registered"):
        bench.runtime_choice("kata", info(**GVISOR_HOST), True)
    assert bench.parse_args(["--runtime", "none"]).runtime == "none"
    assert bench.parse_args([]).runtime is None


def _samples(bench, with_runtime: bool) -> dict:
    """test_benchmark's two runs of every setup (medians 1.5: local, default runtime), and
    with_runtime, the kernel under runsc: start and execute (medians 3.0 s and 6.0 ms)."""
    S = all_setups(bench)
    if with_runtime:
        r = S[bench.RUNTIME] = defaultdict(list)
        for i in range(2):
            for k in ("start to first reply", "start_kernel call", "wait_for_ready", "first execute"):
                r[k].append(2.0 + 2 * i)
            r["execute round trip (ms)"].append(4.0 + 4 * i)
            r["start phases"].append({m: 0.01 for m, _ in bench.START_PHASES})
            r["pod timings"].append({"kernel start": 0.5})
    return S


def test_the_runtime_figures_stand_beside_the_default_runtime_and_local(bench, tmp_path):
    S = _samples(bench, True)
    args = bench.parse_args(["--quick"])
    result = {"machine": {}, "args": vars(args), "notes": [], "date": "2026-01-01T00:00:00+00:00",
              "pool_size": 1, "kernel_runtime": {"name": "runsc", "default": "runc"}}
    report = bench.build_report(S, result, args, True, {})
    figures = {r["figure"]: r for r in report.json()}
    start = figures["start to first execute reply, internal egress, runsc (s)"]
    assert (start["local"], start["awf"], start["ratio"]) == (1.5, 3.0, 2.0)
    assert figures["execute round trip, runsc (ms)"]["ratio"] == 4.0
    assert figures["kernels that failed during the 2 runs, runsc (start to shutdown)"]["met"]

    result["runtime_figures"] = bench.runtime_rows(S, result)
    start, trip = result["runtime_figures"]
    assert (start["local"], start["default"], start["runtime"], start["vs_default"], start["vs_local"]) \
        == (1.5, 1.5, 3.0, 2.0, 2.0)
    assert (trip["runtime"], trip["vs_default"], trip["vs_local"]) == (6.0, 4.0, 4.0)

    result["samples"] = {s: dict(v) for s, v in S.items()}
    text = bench.render_text(report, result, args, [])
    assert "runsc/runc  runsc/local" in text and "awf runsc" in text  # the table and the start breakdown's column
    md = bench.render_markdown(report, result, args, [])
    assert "| figure | local | awf runc | awf runsc | runsc/runc | runsc/local |" in md
    assert "| start to first execute reply (s) | 1.500 | 1.500 | 3.000 | 2.00x | 2.00x |" in md
    assert "| execute round trip (ms) | 1.50 | 1.50 | 6.00 | 4.00x | 4.00x |" in md
    assert "| step | local | awf, bridge | awf, internal | awf, runsc |" in md
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result, default=str))
    assert bench.main(["--from-json", str(path), "--markdown", str(tmp_path / "run.md")]) == 0
    assert (tmp_path / "run.md").read_text() == md


def test_without_a_runtime_the_report_is_as_before(bench):
    S = _samples(bench, False)
    args = bench.parse_args(["--quick"])
    result = {"machine": {}, "args": vars(args), "notes": [], "date": "2026-01-01T00:00:00+00:00",
              "pool_size": 1, "kernel_runtime": {"name": None, "default": "runc"}}
    report = bench.build_report(S, result, args, True, {})
    assert not [r for r in report.json() if "runtime" in r["figure"]]
    assert bench.runtime_rows(S, result) == []


def test_benchmark_runtime_reports_its_workload_beside_the_shared_figures(bench_rt):
    results = {"default": {"start to first reply": [2.0, 3.0], "execute round trip (ms)": [5.0]},
               "runsc": {"start to first reply": [4.0, 5.0], "execute round trip (ms)": [15.0]}}
    work = {"default": {"pure Python loop 3M (s)": 0.3}, "runsc": {"pure Python loop 3M (s)": 0.33}}
    text = bench_rt.render(results, work, "runsc")
    assert "start to first reply (s)" in text and "   1.8" in text and "   3.0" in text and "   1.1" in text
