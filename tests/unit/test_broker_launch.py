"""The broker's pure launch builders, owner labels, identity rules and mount check (no Docker)."""

from __future__ import annotations

import json
import os

import pytest

from awf_kernel import naming
from awf_kernel.broker import identity, launch
from awf_kernel.broker.config import BrokerConfig
from awf_kernel.broker.protocol import parse_request
from awf_kernel.errors import CeilingError, PolicyError
from awf_kernel.render import pod as podspec
from awf_kernel.sandbox.docker import Pod

KID = "4bfe02e6-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
PORTS = {"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "hb_port": 50004, "control_port": 50005}
USER = identity.User(uid=1234, gid=1234, name="alice", home="/home/alice", groups=("alice",), gids=(1234,))


def _req(**fields):
    obj = {"op": "start", "kernel_id": KID, "ports": PORTS, "key": "k" * 32, "cwd": "/home/alice", **fields}
    return parse_request(json.dumps(obj).encode()).start


def test_owner_labels():
    labels = naming.labels(KID, "kernel", "awf-broker:/run/awf-kernel", 1234)
    assert labels[naming.OWNER_UID] == "1234" and labels[naming.SERVER] == "awf-broker:/run/awf-kernel"
    assert naming.OWNER_UID not in naming.labels(KID, "kernel")
    assert naming.kernel_filter(owned=True) == {"label": [f"{naming.MANAGED}=true", naming.OWNER_UID]}
    assert naming.kernel_filter(owned=True, server="awf-broker:/run/x")["label"][-1] == \
        f"{naming.SERVER}=awf-broker:/run/x"
    for value, uid in [("1234", 1234), ("0", 0), ("", None), ("-1", None), ("12a", None), ("1" * 11, None),
                       (None, None), ("\u0661", None)]:
        assert naming.owner_from_label(value) == uid, value
    for bad in (-1, True, "1000"):
        with pytest.raises(ValueError):
            naming.owner_label(bad)


def test_effective_policy_uses_the_brokers_bounds():
    cfg = BrokerConfig(allow_domains=["pypi.org"], block_domains=["evil.example.com"],
                       domain_ceiling=[".example.com"])
    policy, ceiling = launch.effective_policy(cfg, _req(policy={"allow_domains": ["api.example.com"]}))
    assert [str(r) for r in policy.allow] == ["pypi.org", "api.example.com"]
    assert [str(r) for r in policy.block] == ["evil.example.com"] and [str(r) for r in ceiling] == [".example.com"]
    with pytest.raises(CeilingError, match="github.com"):
        launch.effective_policy(cfg, _req(policy={"allow_domains": ["github.com"]}))
    with pytest.raises(PolicyError, match="record mode is disabled"):
        launch.effective_policy(BrokerConfig(allow_record_mode=False), _req(policy={"mode": "record"}))
    policy, _ = launch.effective_policy(BrokerConfig(), _req())
    assert policy.allow == () and policy.mode == "enforce"  # no request: the admin policy only


def test_images_and_command():
    cfg = BrokerConfig(allowed_images=["awf-kernel-test/user-image:1"])
    assert launch.choose_image(cfg, _req()) == cfg.image
    assert launch.choose_image(cfg, _req(image="awf-kernel-test/user-image:1")) == "awf-kernel-test/user-image:1"
    with pytest.raises(launch.StartRefused, match="not one the broker allows"):
        launch.choose_image(cfg, _req(image="debian:bookworm-slim"))
    assert launch.kernel_command(cfg, _req())[-1] == "--IPKernelApp.extra_extensions=awf_notice"
    assert launch.kernel_command(BrokerConfig(cell_notices=False), _req(kernel_cmd=["python3", "-m", "x"])) == (
        "python3", "-m", "x")


def test_connection_info_and_pod_settings():
    req = _req(env={"LANG": "C.UTF-8"})
    info = launch.connection_info(req, KID)
    assert info == {**PORTS, "ip": "0.0.0.0", "key": "k" * 32, "transport": "tcp", "signature_scheme": "hmac-sha256",
                    "kernel_name": "awf-python", "kernel_id": KID}
    cfg = BrokerConfig(mem_limit="", pids_limit=0, dns_servers=["10.0.0.2"])
    paths = launch.paths_for(cfg, KID, USER.uid)
    assert paths.state_dir == f"/run/awf-kernel/kernels/{KID}"
    assert paths.scratch_dir == f"/run/awf-kernel/users/1234/awf-kernel-{KID}-protect"
    assert paths.audit_dir == f"/var/lib/awf-kernel/audit/{KID}"
    s = launch.pod_settings(cfg, req, USER, image=cfg.image, network="bridge", paths=paths,
                            workdir="/home/alice", mounts=())
    assert (s.uid, s.gid, s.owner_uid, s.server) == (1234, 1234, 1234, "awf-broker:/run/awf-kernel")
    assert s.kernel_ports == tuple(PORTS.values()) and s.env == {"LANG": "C.UTF-8"}
    assert (s.mem_limit, s.pids_limit, s.dns_servers) == (None, None, ("10.0.0.2",))
    for kwargs in (podspec.proxy_create_kwargs(s), podspec.kernel_create_kwargs(s, "proxyid"),
                   podspec.firewall_create_kwargs(s, "proxyid", {})):
        assert kwargs["labels"][naming.OWNER_UID] == "1234"
    assert podspec.kernel_create_kwargs(s, "proxyid")["user"] == "1234:1234"
    rules = launch.firewall_inputs(cfg, req)
    assert rules == {"kernel_ports": tuple(PORTS.values()), "dns_upstreams": ["10.0.0.2"], "allowed_private": []}


def test_kernel_ids_never_reach_a_path_unchecked():
    with pytest.raises(ValueError):
        launch.paths_for(BrokerConfig(), "../../etc", 1234)


@pytest.mark.parametrize("uid, min_uid, message", [
    (0, 1000, "root never"), (13, 10, "system account"), (999, 1000, "system account"),
])
def test_who_gets_no_kernel(uid, min_uid, message):
    with pytest.raises(identity.NotAllowed, match=message):
        identity.user_for(uid, min_uid)


def test_unknown_uid_gets_no_kernel():
    with pytest.raises(identity.NotAllowed, match="not in the password database"):
        identity.user_for(2**31 - 7, 1000)


def test_verify_mounts_compares_what_the_container_sees(tmp_path, monkeypatch):
    """Seen through /proc/PID/root: here our own process stands in for the kernel's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(launch.sandbox, "container_pid", lambda cid: os.getpid())
    pod = Pod(KID, "proxy", "kernel", None)
    st = os.stat(tmp_path / "a")
    launch.verify_mounts(pod, {str(tmp_path / "a"): [st.st_dev, st.st_ino]})
    (tmp_path / "a").rename(tmp_path / "a-old")
    (tmp_path / "b").rename(tmp_path / "a")  # swapped after the check
    with pytest.raises(launch.MountMismatch, match="changed while the kernel started"):
        launch.verify_mounts(pod, {str(tmp_path / "a"): [st.st_dev, st.st_ino]})
    monkeypatch.setattr(launch.sandbox, "container_pid", lambda cid: None)
    launch.verify_mounts(pod, {str(tmp_path / "a"): [0, 0]})  # an exited kernel has no mounts in use


def test_single_user_gc_never_takes_a_brokers_pods_for_a_dead_servers():
    from awf_kernel.sandbox.gc import _server_alive

    assert _server_alive(launch.server_label(BrokerConfig())) is True
    assert _server_alive(launch.server_label(BrokerConfig(runtime_dir="/run/x:1"))) is True
