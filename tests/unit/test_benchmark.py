"""scripts/benchmark.py's report logic, on made-up samples (no Docker, no kernels):
a four-minute run must not end in a crash while printing, and each goal's
verdict must be the one issue 9 states."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections import defaultdict

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, limit, local, awf, met", [
    ("ratio", 1.2, 1.0, 1.2, True), ("ratio", 1.2, 1.0, 1.21, False),
    ("max", 0.3, 0.2, 0.3, True), ("max", 0.3, 0.2, 0.31, False),
    ("delta", 1.0, 0.8, 1.8, True), ("delta", 1.0, 0.8, 1.9, False),
    ("min_pct", 0.8, 100.0, 80.0, True), ("min_pct", 0.8, 100.0, 79.0, False),
    ("count", 0, 0, 0, True), ("count", 0, 0, 1, False), ("count", 0, 2, 0, False),
    ("info", None, 1.0, 5.0, None),
])
def test_goal_verdicts(bench, kind, limit, local, awf, met):
    rep = bench.Report()
    rep.add("x", local, awf, "goal", kind, limit)
    assert rep.rows[0]["met"] is met


def test_missing_figures_have_no_verdict_and_print(bench):
    rep = bench.Report()
    rep.add("no awf figure", 1.0, None, "<= 1.2x", "ratio", 1.2)
    rep.add("no local figure", None, 20.0, "<= 25 MiB", "max", 25, fmt="{:.1f}")
    rep.add("not measured", None, None, "<= 1.2x", "ratio", 1.2)
    assert rep.rows[0]["met"] is None and rep.rows[1]["met"] is True and len(rep.rows) == 2
    text = rep.text()
    assert "no awf figure" in text and "20.0" in text
    assert json.dumps(rep.json())


def test_merged_steps_keeps_each_lists_order(bench):
    assert bench.merged_steps([["a", "proxy", "kernel"], ["a", "ingress", "proxy", "kernel"],
                               ["a", "pool claim", "kernel"]]) == ["a", "pool claim", "ingress", "proxy", "kernel"]


def _samples(bench) -> dict:
    """Two runs' worth of the samples main() collects, for each setup."""
    S = {s: defaultdict(list) for s in bench.SETUPS}
    phases = {m: 0.01 for m, _ in bench.START_PHASES + bench.STOP_PHASES}
    mem = {"proxy": {"rss_mib": 50.0, "pss_mib": 26.0, "cgroup_minus_cache_mib": 21.0, "processes": {"squid[1]": 27.0}},
           "kernel": {"rss_mib": 69.0, "pss_mib": 60.0, "cgroup_minus_cache_mib": 70.0, "processes": {}}}
    for setup, r in S.items():
        awf = setup != "local"
        for i in range(2):
            for k in ("start to first reply", "start_kernel call", "wait_for_ready", "first execute", "shutdown",
                      "execute round trip (ms)", "import ipykernel.kernelapp", "docker run of the import"):
                r[k].append(1.0 + i)
            for p in ("", "changed policy: "):
                for k in ("restart", "restart_kernel call", "restart wait_for_ready", "restart to first reply"):
                    r[p + k].append(1.0 + i)
                r[p + "restart pod"].append({"restart: policy": 0.1} if awf else {})
                r[p + "restart phases"].append(phases)
            r["pod timings"].append({"proxy start": 0.3, "firewall step": 0.2} if awf else {})
            r["start phases"].append(phases)
            r["shutdown phases"].append(phases)
            r["memory idle"].append(mem if awf else {"rss_mib": 66.0, "processes": {}})
            if awf:
                r["memory after traffic"].append(mem)
        for path in ("internal", "bridge"):
            if setup in ("local", path):
                r[f"http get ms {path}"] += [0.7, 0.8]
                r[f"https get ms {path}"] += [2.0, 2.5]
                r[f"download MB/s {path}"] += [1000.0, 900.0]
                r[f"https download MB/s {path}"] += [500.0, 400.0]
    return S


def test_a_whole_report_renders_as_text_json_and_markdown(bench, tmp_path):
    S = _samples(bench)
    args = bench.parse_args(["--quick", "--pool-size", "2"])
    assert args.runs == 2
    conc = {"kernels": [{"ok": True, "seconds": 3.0}, {"ok": False, "seconds": 9.0, "error": "Timeout"}],
            "total": 9.0, "slowest": 9.0, "failed": 1, "shutdown_all": 1.0, "shutdown_errors": []}
    result = {"machine": {"commit": "abc1234", "nproc": 2, "kernel": "6.1", "docker_server": "20.10"},
              "args": vars(args), "notes": [], "date": "2026-01-01T00:00:00+00:00", "pool_size": 2,
              "importtime_top": {"local": [["IPython", 0.05]], "image": [["IPython", 0.04]]},
              "concurrent": {"local": {**conc, "failed": 0}, "internal": conc}}
    report = bench.build_report(S, result, args, True, {})
    figures = {r["figure"]: r for r in report.json()}
    start = figures["start to first execute reply, internal egress (s)"]
    assert (start["local"], start["awf"], start["met"]) == (1.5, 1.5, True)
    assert figures["10 at once, internal: failed (of 10)"]["met"] is False
    assert figures["HTTP GET median, bridge (ms; direct by IP vs proxied by name)"]["met"] is True
    assert figures["100 MB download, internal (MB/s; direct vs proxied)"]["ratio"] == 1.0

    result["samples"] = {s: dict(v) for s, v in S.items()}
    text = bench.render_text(report, result, args, ["a note"])
    for expected in ("start breakdown", "restart with a changed policy breakdown", "shutdown breakdown",
                     "pod: proxy start", "pod: restart: policy", "failed: Timeout", "warm pool: pool_size = 2",
                     "note: a note"):
        assert expected in text, expected
    md = bench.render_markdown(report, result, args, [])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result, default=str))
    assert bench.main(["--from-json", str(path), "--markdown", str(tmp_path / "run.md")]) == 0
    assert (tmp_path / "run.md").read_text() == md
    assert "| figure | local | awf | ratio | goal | met? |" in md
    assert "| &nbsp;&nbsp;&nbsp;&nbsp;pod: firewall step | - | 0.200 | 0.200 |" in md
    assert json.dumps(result, default=str)
