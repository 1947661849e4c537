"""Record mode, `check`, `logs` and the egress-drift option, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from awf_kernel.cli import main
from awf_kernel.errors import PolicyError
from awf_kernel.record import record


def _notebook(path, cells, awf=None):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "awf-python", "display_name": "Python (AWF sandboxed)", "language": "python"}
    if awf is not None:
        nb.metadata["awf"] = awf
    nb.cells = [new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def on_jupyter_path(spec_dir, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(spec_dir.parent))
    return spec_dir


FETCH = """
import requests
s = requests.Session(); s.trust_env = False
print(s.get("http://allowed.test/", timeout=10).status_code, requests.get("https://other.test/", verify=False, timeout=10).status_code)
"""


def test_record_writes_the_minimal_allowlist(tmp_path, on_jupyter_path, testnet, capsys):
    nb_path = _notebook(tmp_path / "needs.ipynb", [FETCH], awf={"allow_domains": [], "block_domains": ["blocked.test"]})
    assert record(str(nb_path), kernel_name="awf-python") == 0
    out = capsys.readouterr().out
    added = [l for l in out.splitlines() if l.startswith("+")]
    assert any('"allowed.test"' in l for l in added) and any('"other.test"' in l for l in added)  # the diff
    meta = nbformat.read(str(nb_path), as_version=4).metadata["awf"]
    assert meta == {"allow_domains": ["allowed.test", "other.test"], "block_domains": ["blocked.test"]}
    assert "outputs" not in json.dumps(nbformat.read(str(nb_path), as_version=4).cells[0]) or \
        nbformat.read(str(nb_path), as_version=4).cells[0].outputs == []
    # the recorded allowlist is enough: the notebook now runs in enforce mode
    from nbclient import NotebookClient

    nb = nbformat.read(str(nb_path), as_version=4)
    NotebookClient(nb, kernel_name="awf-python").execute(env={"AWF_POLICY": json.dumps(nb.metadata["awf"])})
    assert "200 200" in nb.cells[0].outputs[0]["text"]


def test_record_mode_can_be_forbidden(start_kernel):
    with pytest.raises(PolicyError) as info:
        start_kernel(policy={"mode": "record"}, settings={"allow_record_mode": False})
    assert "record mode" in str(info.value)


def test_record_mode_respects_block_lists(start_kernel, testnet):
    k = start_kernel(policy={"mode": "record", "block_domains": ["blocked.test"]})
    mark = testnet.mark()
    res = k.probe("""
        import json, requests
        s = requests.Session(); s.trust_env = False
        out = []
        for u in ("http://other.test/", "http://blocked.test/"):
            try:
                out.append(s.get(u, timeout=5).status_code)
            except Exception as e:
                out.append(type(e).__name__)
        print(json.dumps(out))
    """)
    assert res[0] == 200 and res[1] != 200
    assert testnet.web_hits("blocked.test", since=mark) == []


def test_check_command(tmp_path, on_jupyter_path, capsys):
    nb_path = _notebook(tmp_path / "c.ipynb", ["1"], awf={"allow_domains": ["*.allowed.test"]})
    assert main(["check", str(nb_path), "api.allowed.test"]) == 0
    assert "allowed" in capsys.readouterr().out
    assert main(["check", str(nb_path), "allowed.test:443"]) == 1  # apex not covered by *.
    out = capsys.readouterr().out
    assert "denied" in out and "allow_domains" in out
    assert main(["check", str(nb_path), "api.allowed.test:8443"]) == 1


def test_logs_command_json_and_summary(start_kernel, capsys):
    k = start_kernel(policy={"allow_domains": ["allowed.test"]})
    k.run("""
        import requests
        requests.get("http://allowed.test/", timeout=5)
        requests.get("http://blocked.test/", timeout=5)
    """)
    kid = k.kernel_id
    k.shutdown()
    assert main(["logs", kid, "--json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {(r["host"], r["decision"]) for r in lines} >= {("allowed.test", "allowed"), ("blocked.test", "denied")}
    assert main(["logs", kid[:8], "--summary"]) == 0
    out = capsys.readouterr().out
    assert "blocked.test" in out
    assert 'AWF_POLICY that would allow them (set by the launcher, not the notebook): ' \
        '{"allow_domains": ["allowed.test", "blocked.test"]}' in out


def test_drift_option_fails_a_notebook_that_was_denied(tmp_path, spec_dir):
    nb_path = _notebook(tmp_path / "drift.ipynb", ["""
import requests
try:
    requests.get("http://blocked.test/", timeout=5)
except Exception:
    pass
print("swallowed")
"""], awf={"allow_domains": ["allowed.test"]})
    env = {**os.environ, "JUPYTER_PATH": str(spec_dir.parent)}
    env.pop("AWF_POLICY", None)
    base = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-kernel-name", "awf-python",
            "-p", "no:cacheprovider", "-q", str(nb_path)]
    plain = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    drift = subprocess.run(base + ["--awf-fail-on-denied"], env=env, capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "blocked.test" in drift.stdout and "denied egress" in drift.stdout
