"""`awf-kernel gc` collects what a crashed Jupyter process left behind."""

from __future__ import annotations

import subprocess
import sys

from awf_kernel import naming
from awf_kernel.cli import main

CRASH = """
import json, os, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="awf-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.start_kernel(env={"AWF_POLICY": json.dumps({"allow_domains": ["allowed.test"]})})
print(km.kernel_id, flush=True)
os._exit(0)   # the server dies without shutting its kernel down
"""


def test_gc_removes_pods_of_a_dead_server(spec_dir, docker_client, capsys):
    proc = subprocess.run([sys.executable, "-c", CRASH, str(spec_dir)], capture_output=True, text=True, timeout=120)
    kid = proc.stdout.strip().splitlines()[-1]
    left = docker_client.containers.list(all=True, filters=naming.kernel_filter(kid))
    assert {c.labels[naming.ROLE] for c in left} == {"proxy", "kernel"}, proc.stderr
    assert main(["gc", "--dry-run"]) == 0
    assert kid in capsys.readouterr().out
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(kid))  # dry run kept them
    assert main(["gc"]) == 0
    assert "its Jupyter server is gone" in capsys.readouterr().out
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(kid)) == []
    assert docker_client.networks.list(filters=naming.kernel_filter(kid)) == []


def test_gc_leaves_live_kernels_alone(kernel, docker_client, capsys):
    assert main(["gc"]) == 0
    assert kernel.kernel_id not in capsys.readouterr().out
    assert kernel.probe("import json; print(json.dumps(1))") == 1
