"""Bad input gets a clear error naming the fix, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import pathlib
import socket

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from awf_kernel import naming
from awf_kernel.errors import DockerUnavailable, ImageMissing, NetworkMissing, PolicyError, PortClash
from awf_kernel.sandbox import docker as sandbox
from tests.integration.conftest import _ready_pool_containers


def _km(spec_dir, name="awf-python", **kw):
    return KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]), **kw)


def _nothing_left(docker_client, km):
    from awf_kernel.provisioner import AWFProvisioner

    sandbox.wait_for_removals()  # pods go in the background once their kernels ended
    if km.kernel_id:
        assert not (pathlib.Path(AWFProvisioner().audit_dir) / km.kernel_id).exists()
        assert docker_client.containers.list(all=True, filters=naming.kernel_filter(km.kernel_id)) == []
        assert docker_client.networks.list(filters=naming.kernel_filter(km.kernel_id)) == []
    assert not os.path.exists(km.connection_file) or km.connection_file == ""


@pytest.mark.parametrize("policy", [
    {"allow_domains": ["*"]},
    {"allow_domains": ["10.0.0.1"]},
    {"allow_domains": ["allowed.test:443"]},
    {"allow_domains": ["https://allowed.test"]},
    {"allow_domains": ["allowed.test\nhttp_access allow all"]},
    {"allow_domains": ".com"},
    {"allow_domain": ["allowed.test"]},
])
def test_invalid_policy_is_refused(spec_dir, docker_client, policy):
    km = _km(spec_dir)
    with pytest.raises(PolicyError) as info:
        km.start_kernel(env={"AWF_POLICY": json.dumps(policy)})
    msg = str(info.value)
    assert "AWF_POLICY" in msg
    _nothing_left(docker_client, km)


def test_missing_image(spec_dir, start_kernel, docker_client):
    with pytest.raises(ImageMissing) as info:
        start_kernel(settings={"image": "awf-kernel/does-not-exist:1"})
    assert "awf-kernel build" in str(info.value) and "does-not-exist" in str(info.value)
    sandbox.wait_for_removals()  # earlier tests' pods, which go in the background
    assert {c.id for c in docker_client.containers.list(all=True, filters={"label": [f"{naming.MANAGED}=true"]})
            } - _ready_pool_containers() == set()


def test_missing_egress_network(start_kernel, docker_client):
    with pytest.raises(NetworkMissing) as info:
        start_kernel(settings={"egress_network": "awf-no-such-network"})
    assert "egress_network" in str(info.value)


def test_docker_not_running(spec_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    km = _km(spec_dir)
    with pytest.raises(DockerUnavailable) as info:
        km.start_kernel(env={})
    assert "Docker" in str(info.value) and "doctor" in str(info.value)


def test_port_clash(spec_dir, docker_client):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    km = _km(spec_dir, shell_port=port, cache_ports=False)
    try:
        with pytest.raises(PortClash) as info:
            km.start_kernel(env={})
        assert str(port) in str(info.value)
    finally:
        holder.close()
    _nothing_left(docker_client, km)


def test_argv_refuses_without_provisioner(spec_dir):
    """A tool that ignores provisioners runs argv: it must refuse, not run a kernel."""
    import subprocess

    with open(spec_dir / "awf-python" / "kernel.json") as f:
        argv = json.load(f)["argv"]
    proc = subprocess.run([a.replace("{connection_file}", "/nonexistent.json") for a in argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "refusing" in proc.stderr and "provisioner" in proc.stderr


@pytest.mark.parametrize("settings,fragment", [
    ({"extra_mounts": ["no-colon-here"]}, "extra_mounts"),
    ({"kernel_uid": 0}, "kernel_uid 0"),
])
def test_bad_settings_fail_before_any_container(spec_dir, docker_client, settings, fragment):
    """A spec written by hand (`awf-kernel install --set` refuses these): the
    provisioner refuses the setting as it loads it, before any container."""
    from awf_kernel import kernelspec
    from awf_kernel.errors import InvalidSetting

    name = "awf-bad-" + fragment.split()[0].replace("_", "-")
    base = json.loads((spec_dir / "awf-python" / "kernel.json").read_text())["metadata"]["kernel_provisioner"]["config"]
    kernelspec.install(prefix=str(spec_dir.parent.parent.parent), name=name, settings={**base, **settings})
    km = _km(spec_dir, name)
    with pytest.raises(InvalidSetting) as info:
        km.start_kernel(env={})
    assert fragment in str(info.value)
    _nothing_left(docker_client, km)
    assert not km.provisioner or not km.provisioner.connection_dir
