"""The provisioner's decisions, without Docker: settings checked when set, the
kernel's environment, uid/gid, mounts, working folder, the launch plan, and a
failed start that cleans up without hiding its error.

As jupyter_client's own provisioner tests do, the provisioner gets a stand-in
kernel manager as its parent (only what a provisioner calls on it), and the
Docker look-ups of `pre_launch` are replaced by fakes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import replace

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec
from traitlets import Bool, Int, Unicode
from traitlets.config import Configurable

from awf_kernel.runtime import EngineRuntime
from awf_kernel import provisioner as provmod
from awf_kernel.errors import InvalidSetting, SandboxStartError
from awf_kernel.policy import PolicyRequest, parse_domains
from awf_kernel import trust
from awf_kernel.provisioner import PORT_NAMES, AWFProvisioner, LaunchPlan
from awf_kernel.render import pod as podspec
from awf_kernel.sandbox.docker import EgressNetwork

EGRESS = EgressNetwork("bridge", False, ("172.17.0.0/16",), ("172.17.0.1",))


class FakeServer(Configurable):
    """The MultiKernelManager: the provisioner reads its root_dir only."""

    root_dir = Unicode("")


class FakeKernelManager(Configurable):
    """What AWFProvisioner uses of jupyter_client's KernelManager."""

    cache_ports = Bool(False)
    ip = Unicode("127.0.0.1")
    shell_port = Int(50001)
    iopub_port = Int(50002)
    stdin_port = Int(50003)
    hb_port = Int(50004)
    control_port = Int(50005)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[str] = []

    def write_connection_file(self, **kwargs):
        self.calls.append("write_connection_file")

    def get_connection_info(self):
        return {"ip": self.ip, "transport": "tcp", "key": b"secret", "signature_scheme": "hmac-sha256",
                **{name: getattr(self, name) for name in PORT_NAMES}}

    def cleanup_connection_file(self):
        self.calls.append("cleanup_connection_file")


@pytest.fixture
def docker_free(monkeypatch):
    """pre_launch's Docker look-ups answered without an engine."""
    monkeypatch.setattr(provmod.sandbox, "require_image", lambda name, setting: None)
    monkeypatch.setattr(provmod.sandbox, "egress_network", lambda name: EGRESS)
    # awf_kernel.runtime asks the engine; here the engine's default, runc
    monkeypatch.setattr(provmod, "runtime_check", lambda name: EngineRuntime("runc", "runc"))


def make(tmp_path, *, root_dir="", spec_env=None, **settings) -> AWFProvisioner:
    km = FakeKernelManager(parent=FakeServer(root_dir=root_dir))
    spec = KernelSpec(argv=["false"], display_name="t", language="python", env=spec_env or {})
    settings.setdefault("audit_dir", str(tmp_path / "audit"))
    return AWFProvisioner(kernel_id=str(uuid.uuid4()), kernel_spec=spec, parent=km, **settings)


def plan_for(prov: AWFProvisioner, env: dict, cwd: str | None = None) -> LaunchPlan:
    kwargs = asyncio.run(prov.pre_launch(env=env, cwd=cwd))
    assert kwargs["cmd"] == list(prov.plan.cmd)
    return prov.plan


# --- settings are checked when they are set -------------------------------------------------------


@pytest.mark.parametrize("settings,fragment", [
    ({"allow_domains": ["*"]}, "would allow everything"),
    ({"block_domains": ["http://x.org"]}, "without a scheme"),
    ({"domain_ceiling": [".com"]}, "public suffix"),
    ({"allow_domains": ["@nope"]}, "nope"),
    ({"kernel_uid": 0}, "kernel_uid 0"),
    ({"kernel_uid": 13}, "kernel_uid 13"),
    ({"kernel_gid": 0}, "kernel_gid 0"),
    ({"kernel_gid": 13}, "kernel_gid 13"),
    ({"kernel_uid": -1}, "kernel_uid -1"),
    ({"extra_mounts": ["no-colon-here"]}, "extra_mounts[0]"),
    ({"extra_mounts": ["/data:/data:rx"]}, "HOST_PATH:CONTAINER_PATH"),
    ({"extra_mounts": ["data:/data"]}, "absolute"),
    ({"extra_mounts": ["/data:/awf/audit"]}, "/awf"),
    ({"dns_servers": ["dns.example"]}, "not an IP address"),
    ({"allow_private_destinations": ["169.254.0.0/16"]}, "169.254"),
    ({"deny_write": ["../x"]}, "deny_write"),
    ({"mem_limit": "2 GB"}, "mem_limit"),
    ({"tmp_size": "512mb"}, "tmp_size"),
    ({"cpu_limit": -1.0}, "cpu_limit"),
    ({"pids_limit": -5}, "pids_limit"),
    ({"startup_timeout": 0.0}, "startup_timeout"),
    ({"image": ""}, "image"),
    ({"egress_network": " bridge"}, "egress_network"),
    ({"kernel_cmd": []}, "kernel_cmd"),
])
def test_bad_settings_are_refused_when_set(settings, fragment):
    with pytest.raises(InvalidSetting) as info:
        AWFProvisioner(**settings)
    assert fragment in info.value.message and info.value.hint
    prov = AWFProvisioner()
    (name, value), = settings.items()
    with pytest.raises(InvalidSetting):
        setattr(prov, name, value)  # server config applied later goes through the same check


def test_good_settings_are_kept_as_given():
    prov = AWFProvisioner(allow_domains=["@pypi", "example.org"], domain_ceiling=[], kernel_uid=1234,
                          kernel_gid=1234, extra_mounts=["/srv/data:/data:ro"], mem_limit="", tmp_size="64m",
                          cpu_limit=0.0, startup_timeout=5.0)
    assert prov.allow_domains == ["@pypi", "example.org"] and prov.domain_ceiling == []
    assert prov.kernel_uid == 1234 and prov.extra_mounts == ["/srv/data:/data:ro"]


@pytest.mark.parametrize("spec,expected", [
    ("/srv/data:/data", podspec.Mount("/srv/data", "/data", False)),
    ("/srv/data:/data:ro", podspec.Mount("/srv/data", "/data", True)),
    ("/srv/data:/data:rw", podspec.Mount("/srv/data", "/data", False)),
    ("/a:/awfully/fine", podspec.Mount("/a", "/awfully/fine", False)),
])
def test_parse_mount(spec, expected):
    assert podspec.parse_mount(spec) == expected


@pytest.mark.parametrize("spec", ["", "/a", "/a:", ":/b", "/a:/b:ro:x", "/a:/b:RO", "a:/b", "/a:b", "/a:/awf",
                                  "/a:/awf/lib/x", "/a:/x/../awf", "/a://awf"])
def test_parse_mount_refuses(spec):
    with pytest.raises(ValueError) as info:
        podspec.parse_mount(spec)
    assert repr(spec) in str(info.value)


def test_parse_mounts_names_the_entry():
    with pytest.raises(ValueError, match=r"extra_mounts\[1\]"):
        podspec.parse_mounts(["/a:/b", "nope"])
    with pytest.raises(ValueError):
        podspec.parse_mounts("/a:/b")  # a string, not a list


# --- the launch plan ------------------------------------------------------------------------------


def test_the_whole_plan(tmp_path, docker_free):
    folder = tmp_path / "project"
    folder.mkdir()
    nb = write_notebook(folder / "a.ipynb", {"allow_domains": ["@pypi", "example.org"],
                                             "block_domains": ["bad.example.org"]}, trusted=True)
    data = tmp_path / "data"
    data.mkdir()
    link = tmp_path / "data-link"
    link.symlink_to(data)
    prov = make(tmp_path, root_dir=str(tmp_path), allow_domains=["admin.org"], domain_ceiling=[".example.org", "@pypi"],
                kernel_uid=4242, kernel_gid=4343, extra_mounts=[f"{link}:/data:ro"], cell_notices=True)
    plan = plan_for(prov, {"JPY_SESSION_NAME": str(nb), "LANG": "C.UTF-8", "SECRET_TOKEN": "x"}, cwd=str(folder))
    resolved = prov.resolve_policy({"JPY_SESSION_NAME": str(nb)})
    assert plan == LaunchPlan(
        policy=resolved.policy,
        ceiling=parse_domains([".example.org", "@pypi"], "t"),
        request=resolved.request,
        egress=EGRESS,
        env={"JPY_SESSION_NAME": str(nb), "LANG": "C.UTF-8"},
        workdir=str(folder),
        notebook=str(nb),
        uid=4242, gid=4343,
        mounts=(podspec.Mount(str(nb), str(nb), read_only=True), podspec.Mount(str(data), "/data", read_only=True)),
        cmd=(*prov.kernel_cmd, "--IPKernelApp.extra_extensions=awf_notice"),
    )
    assert [str(r) for r in plan.policy.allow] == ["admin.org", "pypi.org", "files.pythonhosted.org", "example.org"]
    assert plan.request.written() == {"allow_domains": ["@pypi", "example.org"],
                                      "block_domains": ["bad.example.org"], "source": f"notebook {nb} metadata awf"}
    assert prov.parent.calls == ["write_connection_file"]
    assert prov.connection_info["shell_port"] == 50001


@pytest.fixture(autouse=True)
def own_notary(tmp_path, monkeypatch):
    """Notebook trust is kept in the user's Jupyter data folder: a test's own."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))


def write_notebook(path, awf: dict, trusted: bool):
    nb = nbformat.v4.new_notebook(metadata={"awf": awf})
    nb.cells.append(nbformat.v4.new_code_cell("1"))
    nbformat.write(nb, str(path))
    if trusted:
        trust.trust(str(path))
    return path


def test_an_untrusted_notebooks_request_waits_for_consent(tmp_path):
    nb = write_notebook(tmp_path / "downloaded.ipynb", {"allow_domains": ["example.org"]}, trusted=False)
    prov = make(tmp_path, root_dir=str(tmp_path), allow_domains=["admin.org"])
    resolved = prov.resolve_policy({"JPY_SESSION_NAME": str(nb)})
    assert resolved.request is None and [str(r) for r in resolved.policy.allow] == ["admin.org"]
    assert resolved.pending.allow_written == ("example.org",)
    # the user trusts it ("Trust Notebook"): the request applies
    trust.trust(str(nb))
    resolved = prov.resolve_policy({"JPY_SESSION_NAME": str(nb)})
    assert resolved.pending is None and resolved.policy.decide("example.org").allowed


def test_consent_rule_can_be_turned_off_and_the_launchers_policy_is_consent(tmp_path):
    nb = write_notebook(tmp_path / "downloaded.ipynb", {"allow_domains": ["example.org"]}, trusted=False)
    off = make(tmp_path, root_dir=str(tmp_path), require_trust=False).resolve_policy({"JPY_SESSION_NAME": str(nb)})
    assert off.pending is None and off.policy.decide("example.org").allowed
    explicit = make(tmp_path, root_dir=str(tmp_path)).resolve_policy(
        {"JPY_SESSION_NAME": str(nb), "AWF_POLICY": json.dumps({"allow_domains": ["b.example.org"]})})
    assert explicit.pending is None and explicit.policy.decide("b.example.org").allowed


def test_a_notebook_edited_after_it_was_trusted_is_untrusted_again(tmp_path):
    nb = write_notebook(tmp_path / "mine.ipynb", {"allow_domains": ["example.org"]}, trusted=True)
    data = json.loads(nb.read_text())
    data["metadata"]["awf"]["allow_domains"].append("evil.example.net")  # changed outside Jupyter
    nb.write_text(json.dumps(data))
    resolved = make(tmp_path, root_dir=str(tmp_path)).resolve_policy({"JPY_SESSION_NAME": str(nb)})
    assert resolved.request is None and resolved.pending.allow_written == ("example.org", "evil.example.net")


def test_resolve_policy_returns_the_ceiling_and_request(tmp_path):
    prov = make(tmp_path, domain_ceiling=[".example.org"])
    resolved = prov.resolve_policy({"AWF_POLICY": json.dumps({"allow_domains": ["a.example.org"]})})
    assert resolved.ceiling == parse_domains([".example.org"], "t")
    assert resolved.request.source == "AWF_POLICY" and resolved.request.allow_written == ("a.example.org",)
    assert resolved.policy.decide("a.example.org").allowed
    unbounded = make(tmp_path).resolve_policy({})
    assert unbounded.ceiling is None and unbounded.request is None and not unbounded.policy.allow


def test_no_cell_notices_no_extension(tmp_path, docker_free):
    prov = make(tmp_path, cell_notices=False)
    assert plan_for(prov, {}, cwd=str(tmp_path)).cmd == tuple(prov.kernel_cmd)


def test_env_comes_from_the_allowlist_and_the_spec_only(tmp_path, docker_free):
    launcher = {"LANG": "C.UTF-8", "LC_ALL": "C", "LC_TIME": "C", "TZ": "UTC", "JPY_SESSION_NAME": "x.ipynb",
                "PATH": "/usr/bin", "HOME": "/root", "JUPYTERHUB_API_TOKEN": "t0ken", "JPY_API_TOKEN": "t",
                "AWS_SECRET_ACCESS_KEY": "k", "JPY_PARENT_PID": "1", "MY_VAR": "hello"}
    prov = make(tmp_path, spec_env={"FROM_SPEC": "${MY_VAR}-1", "JPY_PARENT_PID": "9"})
    env = plan_for(prov, launcher, cwd=str(tmp_path)).env
    assert env == {"LANG": "C.UTF-8", "LC_ALL": "C", "LC_TIME": "C", "TZ": "UTC", "JPY_SESSION_NAME": "x.ipynb",
                   "FROM_SPEC": "hello-1"}
    more = make(tmp_path, env_allowlist=["MY_*"])
    assert plan_for(more, launcher, cwd=str(tmp_path)).env == {"MY_VAR": "hello"}


def test_uid_and_gid(tmp_path, monkeypatch):
    prov = make(tmp_path)
    folder = tmp_path / "owned"
    folder.mkdir()
    os.chown(folder, 2345, 3456) if os.getuid() == 0 else None
    monkeypatch.setattr(provmod.os, "getuid", lambda: 1500)
    monkeypatch.setattr(provmod.os, "getgid", lambda: 1600)
    assert prov._ids(str(folder)) == (1500, 1600)  # the server's user
    if os.stat(folder).st_uid == 2345:
        monkeypatch.setattr(provmod.os, "getuid", lambda: 0)
        monkeypatch.setattr(provmod.os, "getgid", lambda: 0)
        assert prov._ids(str(folder)) == (2345, 3456)  # a root server: the folder's owner
    monkeypatch.setattr(provmod.os, "getuid", lambda: 0)
    monkeypatch.setattr(provmod.os, "getgid", lambda: 0)
    assert prov._ids(None) == (1000, 1000)  # a root server, no folder: never root
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir()
    os.chown(root_owned, 0, 0) if os.getuid() == 0 else None
    if os.stat(root_owned).st_uid == 0:
        assert prov._ids(str(root_owned)) == (1000, 1000)
    prov.kernel_uid, prov.kernel_gid = 4000, 4001
    assert prov._ids(str(folder)) == (4000, 4001)  # the settings win


def test_uid_of_the_proxy_is_refused_even_when_derived(tmp_path, monkeypatch):
    monkeypatch.setattr(provmod.os, "getuid", lambda: 13)
    with pytest.raises(SandboxStartError, match="kernel_uid 13"):
        make(tmp_path)._ids(None)


def test_workdir(tmp_path):
    prov = make(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert prov._workdir(str(tmp_path / "link")) == str(real)
    for forbidden in ("/", "/etc", "/var/run", "/usr"):
        assert prov._workdir(forbidden) is None
    assert prov._workdir(str(tmp_path / "missing")) is None
    prov.mount_workdir = False
    assert prov._workdir(str(real)) is None


def test_notebook_outside_the_workdir_is_not_mounted(tmp_path, docker_free):
    folder, elsewhere = tmp_path / "here", tmp_path / "there"
    folder.mkdir()
    elsewhere.mkdir()
    nb = elsewhere / "n.ipynb"
    nb.write_text(json.dumps({"metadata": {}}))
    plan = plan_for(make(tmp_path, root_dir=str(tmp_path)), {"JPY_SESSION_NAME": str(nb)}, cwd=str(folder))
    assert plan.notebook == str(nb) and plan.mounts == ()
    no_workdir = plan_for(make(tmp_path, root_dir=str(tmp_path), mount_workdir=False),
                          {"JPY_SESSION_NAME": str(nb)}, cwd=str(elsewhere))
    assert no_workdir.workdir is None and no_workdir.mounts == ()


def test_the_plan_is_frozen(tmp_path, docker_free):
    plan = plan_for(make(tmp_path), {}, cwd=str(tmp_path))
    with pytest.raises(AttributeError):
        plan.uid = 0  # type: ignore[misc]


def test_a_policy_error_stops_pre_launch_before_docker(tmp_path, monkeypatch):
    def no_docker(*args):
        raise AssertionError("Docker was asked")

    monkeypatch.setattr(provmod.sandbox, "require_image", no_docker)
    prov = make(tmp_path, domain_ceiling=["a.example.org"])
    from awf_kernel.errors import CeilingError

    with pytest.raises(CeilingError):
        asyncio.run(prov.pre_launch(env={"AWF_POLICY": json.dumps({"allow_domains": ["b.example.org"]})}))
    assert prov.plan is None


# --- a failed start ---------------------------------------------------------------------------------


def test_a_failed_start_cleans_up_and_keeps_its_error(tmp_path, docker_free, monkeypatch):
    prov = make(tmp_path)
    plan_for(prov, {}, cwd=str(tmp_path))

    class Boom(Exception):
        pass

    failing = []

    def create_pod(*args):
        failing.append(True)
        raise Boom("the pod's own error")

    monkeypatch.setattr(provmod.sandbox, "create_pod", create_pod)
    ran = []

    def broken(name):
        def step():
            if failing:  # only the cleanup's calls fail, not the start's own
                ran.append(name)
                raise OSError(f"{name} failed too")
        return step

    for name in ("_remove_placeholders", "_discard_empty_audit_dir", "_return_ports"):
        monkeypatch.setattr(prov, name, broken(name))
    with pytest.raises(Boom, match="the pod's own error"):
        asyncio.run(prov.launch_kernel(list(prov.plan.cmd)))
    # every step ran although the ones before it failed
    assert ran == ["_remove_placeholders", "_discard_empty_audit_dir", "_return_ports"]
    assert prov.parent.calls[-1] == "cleanup_connection_file"
    assert prov.connection_dir is None and prov.pod is None
    monkeypatch.undo()
    prov._remove_placeholders()  # what the broken step left: the scratch folder of the protection


def test_a_failed_start_removes_what_it_made(tmp_path, docker_free, monkeypatch):
    prov = make(tmp_path)
    plan_for(prov, {}, cwd=str(tmp_path))
    made = {}

    def create_pod(settings, egress, files, rules, timeout):
        made["connection_dir"] = settings.connection_dir
        made["audit_dir"] = settings.audit_dir
        made["policy"] = json.loads((tmp_path / "audit" / prov.kernel_id / "policy.json").read_text())
        raise RuntimeError("no pod")

    monkeypatch.setattr(provmod.sandbox, "create_pod", create_pod)
    with pytest.raises(RuntimeError, match="no pod"):
        asyncio.run(prov.launch_kernel(list(prov.plan.cmd)))
    assert not os.path.exists(made["connection_dir"]) and not os.path.exists(made["audit_dir"])
    assert made["policy"]["request"] is None and made["policy"]["ceiling"] is None


def test_launch_without_pre_launch_is_a_clear_error(tmp_path):
    prov = make(tmp_path)
    with pytest.raises(SandboxStartError, match="without pre_launch"):
        asyncio.run(prov.launch_kernel(["x"]))


def _claim_setup(tmp_path, monkeypatch, apply_error=None, start_error=None):
    """A provisioner about to start in a claimed pool pod, with the engine
    calls recorded (when each began and ended) instead of made."""
    prov = make(tmp_path)
    plan_for(prov, {}, cwd=str(tmp_path))
    events, removed = [], []
    base = provmod.sandbox.Pod("pool-abc", "proxyid", "", None)

    def apply_policy(proxy_id, files, generation, timeout=5.0):
        events.append(("apply", "begin"))
        time.sleep(0.2)
        events.append(("apply", "end"))
        if apply_error:
            raise apply_error
        return 0.2

    def start_kernel(settings, pod, startup_timeout=20.0):
        events.append(("kernel", "begin"))
        time.sleep(0.1)
        events.append(("kernel", "end"))
        if start_error:
            raise start_error
        return provmod.sandbox.Pod(pod.kernel_id, pod.proxy_id, "kernelid", None,
                                  timings={**pod.timings, "kernel start": 0.1})

    monkeypatch.setattr(provmod.sandbox, "apply_policy", apply_policy)
    monkeypatch.setattr(provmod.sandbox, "start_kernel", start_kernel)
    monkeypatch.setattr(provmod.sandbox, "rename_proxy", lambda pod, kid: events.append(("rename", kid)))
    monkeypatch.setattr(provmod.sandbox, "remove_pod", lambda kid: removed.append(kid))
    settings, _, files, _ = prov._pod_inputs(prov.plan, list(prov.plan.cmd))
    return prov, settings, files, base, events, removed


def test_a_claimed_pods_policy_is_applied_beside_the_kernels_start(tmp_path, docker_free, monkeypatch):
    """The pool pod's deny-all holds until the notebook's policy is confirmed,
    so the two run side by side; the start returns only when both are done."""
    prov, settings, files, base, events, removed = _claim_setup(tmp_path, monkeypatch)
    pod = prov._start_beside_policy(settings, files, base, "pool claim",
                                    then=lambda: provmod.sandbox.rename_proxy(base, prov.kernel_id))
    assert events.index(("kernel", "begin")) < events.index(("apply", "end"))  # overlapped
    assert ("rename", prov.kernel_id) in events and removed == []
    assert pod.kernel_id_container == "kernelid" and "kernel start" in pod.timings
    assert any(k.startswith("pool claim") for k in pod.timings)


@pytest.mark.parametrize("new_allow,overlapped", [
    (["allowed.test", "api.allowed.test"], True),   # widened: the old policy is never wider than the new
    (["api.allowed.test"], False),                  # narrowed: the new one is in force before the kernel starts
])
def test_a_restarts_changed_policy_overlaps_the_kernels_start_only_when_it_widens(
        tmp_path, docker_free, monkeypatch, new_allow, overlapped):
    prov, _, _, base, events, removed = _claim_setup(tmp_path, monkeypatch)
    monkeypatch.setattr(provmod.sandbox, "proxy_still_set_up", lambda pod: True)
    old = prov.resolve_request(PolicyRequest(allow=parse_domains(["allowed.test"], "t")))
    new = prov.resolve_request(PolicyRequest(allow=parse_domains(new_allow, "t")))
    prov._in_force, prov._kept = old.policy, base
    prov._generation = prov._proxy_files(replace(prov.plan, policy=old.policy))[1]
    plan = replace(prov.plan, policy=new.policy)
    pod = prov._start_pod(plan, list(plan.cmd))
    assert (events.index(("kernel", "begin")) < events.index(("apply", "end"))) is overlapped, events
    assert "restart: policy" in pod.timings and removed == []


def test_a_live_change_that_was_not_confirmed_leaves_the_policy_in_force_unknown(tmp_path, docker_free,
                                                                                monkeypatch):
    """The proxy may then answer by either policy: the restart that follows
    must put its policy in force before the kernel starts, never beside it."""
    prov, _, _, base, events, removed = _claim_setup(tmp_path, monkeypatch,
                                                     apply_error=SandboxStartError("not confirmed"))
    killed = []
    monkeypatch.setattr(provmod.sandbox, "signal_container", lambda cid, sig: killed.append(cid))
    prov.pod = provmod.sandbox.Pod("pool-abc", "proxyid", "kernelid", None)
    prov._in_force = prov.plan.policy
    wider = prov.resolve_request(PolicyRequest(allow=parse_domains(["allowed.test", "other.test"], "t")))
    with pytest.raises(SandboxStartError, match="not confirmed"):
        asyncio.run(prov._apply(wider, "test"))
    assert killed == ["kernelid"]
    assert prov._in_force is None and prov._generation == ""


@pytest.mark.parametrize("where", ["apply", "kernel"])
def test_a_claimed_pod_whose_policy_or_kernel_fails_is_removed(tmp_path, docker_free, monkeypatch, where):
    err = SandboxStartError(f"{where} failed")
    prov, settings, files, base, events, removed = _claim_setup(
        tmp_path, monkeypatch, apply_error=err if where == "apply" else None,
        start_error=err if where == "kernel" else None)
    with pytest.raises(SandboxStartError, match=f"{where} failed"):
        prov._start_beside_policy(settings, files, base, "pool claim")
    assert removed == ["pool-abc"]
    assert ("apply", "end") in events  # never left running behind the error
