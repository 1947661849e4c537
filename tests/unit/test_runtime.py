"""The kernel container's runtime: which registrations keep the pod's rules in
force (awf_kernel.runtime), the setting, and where it reaches the pod's spec."""

from __future__ import annotations

import pytest

from docker.errors import APIError

from awf_kernel import runtime
from awf_kernel.errors import InvalidSetting
from awf_kernel.provisioner import AWFProvisioner
from awf_kernel.render import pod as podspec
from awf_kernel.runtime import EngineRuntime, RuntimeMissing, RuntimeRefused


def info(default="runc", **runtimes):
    base = {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}
    return {"DefaultRuntime": default, "Runtimes": {**base, **{k.replace("_", "-"): v for k, v in runtimes.items()}}}


PLAIN = {"path": "/usr/bin/runsc"}
HOSTINET = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}


@pytest.mark.parametrize("args, expected", [
    ((), "sandbox"),
    (("--network=host",), "host"),
    (("-network=host",), "host"),
    (("--network", "host"),  "host"),
    (("-network", "none"), "none"),
    (("--network=host", "--debug", "--network=sandbox"), "sandbox"),  # the last one wins, as in Go's flag
    (("--platform=kvm", "--network=host"), "host"),
    (("--networkx=host",), "sandbox"),
])
def test_gvisor_network_mode_from_its_flags(args, expected):
    assert EngineRuntime("runsc", "/usr/bin/runsc", args).gvisor_network == expected


@pytest.mark.parametrize("rt", [
    EngineRuntime("runc", "runc"),
    EngineRuntime("crun", "/usr/bin/crun"),
    EngineRuntime("io.containerd.runc.v2", "runc"),
    EngineRuntime("runsc", "/usr/bin/runsc", ("--network=host",)),
    EngineRuntime("sandboxed", "/opt/gvisor/runsc", ("--platform=kvm", "--network=host")),
    EngineRuntime("runsc", "/usr/bin/runsc"),  # the plain registration: routed
    EngineRuntime("gvisor", "/usr/local/bin/runsc-wrapper"),
    EngineRuntime("runsc", "", (), "io.containerd.runsc.v1"),  # a shim: its mode unknown, routed holds for any
])
def test_runtimes_that_keep_the_rules(rt):
    assert runtime.judge(rt) is None


@pytest.mark.parametrize("rt, expected", [
    (EngineRuntime("runc", "runc"), False),
    (EngineRuntime("crun", "/usr/bin/crun"), False),
    (EngineRuntime("runsc", "/usr/bin/runsc", ("--network=host",)), False),
    (EngineRuntime("runsc", "/usr/bin/runsc"), True),
    (EngineRuntime("runsc", "/usr/bin/runsc", ("--network=sandbox",)), True),
    (EngineRuntime("gvisor", "/usr/local/bin/runsc-wrapper"), True),
    (EngineRuntime("runsc", "", (), "io.containerd.runsc.v1"), True),
])
def test_a_runtime_with_its_own_network_stack_is_routed(rt, expected):
    """Its packets may come from a stack of its own: the kernel then gets a
    namespace of its own, linked into the proxy's (render/link.py)."""
    assert runtime.routed(rt) is expected


@pytest.mark.parametrize("version, kernel, expected", [
    ("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n", "6.18.44-fc-v669", True),   # Debian 12 on 6.18
    ("runsc version 0.0~20240729.0\n", "6.11.0", True),                              # bookworm-backports
    ("runsc version release-20240807.0\n", "6.18.44", False),
    ("runsc version release-20260817.0\n", "6.18.44", False),
    ("runsc version 0.0~20221219.0\n", "6.1.0-18-amd64", False),                     # Debian 12's own kernel
    ("runsc version 0.0~20221219.0\n", "6.10.14", False),
    ("runsc version awf-test-emulation\n", "6.18.44", False),                         # unknown: left to the start
    ("", "6.18.44", False),
])
def test_gvisor_too_old_for_the_host_kernel(version, kernel, expected):
    assert runtime.too_old_for_kernel(version, kernel) is expected


def test_a_too_old_gvisor_is_refused_with_the_fix():
    info_ = {**info(runsc=PLAIN), "KernelVersion": "6.18.44"}
    rt = runtime.resolve("runsc", info_)
    with pytest.raises(RuntimeRefused) as exc:
        runtime.refuse_if_too_old(rt, info_, "runsc version 0.0~20221219.0\n")
    text = str(exc.value)
    assert runtime.ROOT_NS_ERROR in text and "release-20240801" in text and '"--network=host"' in text
    runtime.refuse_if_too_old(rt, info_, "runsc version release-20240807.0\n")  # new enough: no error
    hostinet = runtime.resolve("runsc", {**info(runsc=HOSTINET), "KernelVersion": "6.18.44"})
    runtime.refuse_if_too_old(hostinet, info_, "runsc version 0.0~20221219.0\n")  # host network: not routed


@pytest.mark.parametrize("rt, fragment", [
    (EngineRuntime("runsc", "/usr/bin/runsc", ("--network=none",)), "no network at all"),
    (EngineRuntime("kata", "/usr/bin/kata-runtime"), "not a runtime awf-kernel knows"),
    (EngineRuntime("sysbox-runc", "/usr/bin/sysbox-runc"), "not a runtime awf-kernel knows"),
])
def test_runtimes_that_would_bypass_the_rules_are_refused(rt, fragment):
    assert fragment in (runtime.judge(rt) or "")


def test_resolve_picks_the_setting_or_the_engine_default():
    assert runtime.resolve("", info()).name == "runc"
    assert runtime.resolve("runsc", info(runsc=HOSTINET)).gvisor


def test_plain_gvisor_registration_is_accepted_and_routed():
    rt = runtime.resolve("runsc", info(runsc=PLAIN))
    assert rt.gvisor and runtime.routed(rt)


def test_missing_runtime_names_the_daemon_json_fix():
    with pytest.raises(RuntimeMissing) as exc:
        runtime.resolve("runsc", info())
    text = str(exc.value)
    assert "not registered" in text and "runc" in text
    assert '{"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}' in text
    assert "kill -HUP $(pidof dockerd)" in text


def test_a_gvisor_default_runtime_is_refused_whatever_the_setting():
    """The engine's default runs the proxy and the firewall step too; under
    gVisor they would install their rules into gVisor's own stack."""
    for setting in ("", "runc", "runsc"):
        with pytest.raises(RuntimeRefused) as exc:
            runtime.resolve(setting, info(default="runsc", runsc=HOSTINET))
        assert "default runtime is 'runsc'" in str(exc.value)


@pytest.mark.parametrize("value", ["run sc", "-runsc", "runsc;rm", "runsc\n", " runsc"])
def test_bad_runtime_names_are_refused_when_set(value):
    with pytest.raises(InvalidSetting) as exc:
        AWFProvisioner(runtime=value)
    assert "runtime" in str(exc.value)


def test_runtime_reaches_the_kernel_container_only():
    s = podspec.PodSettings(kernel_id="k1", proxy_image="p", kernel_image="k", kernel_cmd=("python3",),
                            kernel_ports=(1, 2, 3, 4, 5), network="bridge", uid=1000, gid=1000,
                            connection_dir="/c", audit_dir="/a", runtime="runsc")
    assert podspec.kernel_create_kwargs(s, "proxyid")["runtime"] == "runsc"
    assert "runtime" not in podspec.proxy_create_kwargs(s)
    assert "runtime" not in podspec.firewall_create_kwargs(s, "proxyid", {})
    default = podspec.PodSettings(**{**s.__dict__, "runtime": ""})
    assert "runtime" not in podspec.kernel_create_kwargs(default, "proxyid")
    assert AWFProvisioner().runtime == ""


def test_the_broker_passes_its_kernel_runtime_and_checks_names():
    """Hub mode: BrokerConfig.kernel_runtime (the broker checks it at each start, as the provisioner does)."""
    from traitlets import TraitError

    from tests.unit.test_broker_launch import KID, USER, _req

    from awf_kernel.broker import launch
    from awf_kernel.broker.config import BrokerConfig

    with pytest.raises(TraitError, match="kernel_runtime"):
        BrokerConfig(kernel_runtime="run sc")
    cfg = BrokerConfig(kernel_runtime="runsc")
    s = launch.pod_settings(cfg, _req(), USER, image=cfg.image, network="bridge",
                            paths=launch.paths_for(cfg, KID, USER.uid), workdir="/home/alice", mounts=())
    assert s.runtime == "runsc" and podspec.kernel_create_kwargs(s, "proxyid")["runtime"] == "runsc"


class _FakeEngine:
    """`docker info` and `containers.run` of a client, for `doctor_check`."""

    def __init__(self, info, output=b"gVisor (network: host): Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"):
        self._info, self.runs = info, []
        self.containers = self
        self._output = output

    def info(self):
        return self._info

    def run(self, image, command, **kw):
        self.runs.append((image, kw))
        if isinstance(self._output, Exception):
            raise self._output
        return self._output


def test_doctor_checks_registration_decision_and_a_real_start():
    ok, detail, fix = runtime.doctor_check(_FakeEngine(info()), "", "img", "bridge")
    assert ok and "engine default 'runc'" in detail
    engine = _FakeEngine(info(runsc=PLAIN), output=b"gVisor (network: own): Linux version 4.4.0")
    ok, detail, _ = runtime.doctor_check(engine, "runsc", "img", "bridge")
    assert ok and "network: own" in detail  # routed: its own stack is fine
    engine = _FakeEngine(info(runsc=PLAIN), output=APIError(
        "OCI runtime start failed: ... cannot run with network enabled in root network namespace: unknown"))
    ok, detail, fix = runtime.doctor_check(engine, "runsc", "img", "bridge")
    assert not ok and "did not start" in detail and "release-20240801" in fix
    engine = _FakeEngine(info(runsc=HOSTINET))
    ok, detail, _ = runtime.doctor_check(engine, "runsc", "img", "bridge")
    assert ok and "gVisor" in detail
    assert engine.runs[0][1]["runtime"] == "runsc" and engine.runs[0][1]["network"] == "bridge"
    ok, detail, _ = runtime.doctor_check(_FakeEngine(info(runsc=HOSTINET), output=b"Linux version 6.1"),
                                         "runsc", "img", "bridge")
    assert not ok and "does not run under gVisor" in detail
    ok, detail, _ = runtime.doctor_check(_FakeEngine(info(runsc=HOSTINET), output=b"gVisor (network: own): Linux"),
                                         "runsc", "img", "bridge")
    assert not ok and "another network mode" in detail
    ok, detail, fix = runtime.doctor_check(_FakeEngine(info()), "runsc", "img", "bridge")
    assert not ok and "not registered" in detail and "daemon.json" in fix
