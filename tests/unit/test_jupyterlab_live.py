"""The server extension's view of a kernel and its post-save hook, with the
real AWFProvisioner class and fake session/kernel managers (no Docker): which
saves reach a kernel, and what the browser is told."""

from __future__ import annotations

import asyncio
import json

import nbformat
from nbformat.v4 import new_notebook

from awf_kernel.errors import CeilingError, SandboxStartError
from awf_kernel.jupyterlab import kernels
from awf_kernel.jupyterlab.live import LivePolicy
from awf_kernel.policy import parse_request
from awf_kernel.provisioner import AWFProvisioner


class FakeProvisioner(AWFProvisioner):
    """Records what the hook asks; its view is whatever the test sets."""

    def __init__(self, view: dict, fail: Exception | None = None, **kw):
        super().__init__(**kw)
        self._view, self.fail, self.reloads = view, fail, []

    def policy_view(self) -> dict:
        return self._view

    async def reload_policy(self, *, source: str = ""):
        self.reloads.append(source)
        if self.fail is not None:
            raise self.fail


class Sessions:
    def __init__(self, sessions):
        self.sessions = sessions

    async def list_sessions(self):
        return self.sessions


class Kernels:
    def __init__(self, provisioners):
        self.provisioners = provisioners

    def get_kernel(self, kernel_id):
        km = type("KM", (), {})()
        km.provisioner = self.provisioners[kernel_id]
        return km


class Notary:
    def __init__(self, trusted):
        self.trusted = trusted

    def check_signature(self, nb):
        return self.trusted


def _server(provisioners, path="nb.ipynb", trusted=True):
    cm = type("CM", (), {"notary": Notary(trusted)})()
    sessions = [{"path": path, "kernel": {"id": kid}} for kid in provisioners]
    sessions.append({"path": "other.ipynb", "kernel": {"id": "nope"}})
    return type("Server", (), {"session_manager": Sessions(sessions), "kernel_manager": Kernels(provisioners),
                               "contents_manager": cm})()


def _view(request=None, pending=None, mode="enforce", allow=("a.example",)):
    return {"hub_mode": False, "require_trust": True,
            "effective": {"allow_domains": list(allow), "block_domains": [], "mode": mode, "allow_all": False},
            "admin": {"allow_domains": [], "block_domains": [], "allow_record_mode": True},
            "ceiling": ["a.example", "@pypi"], "request": request, "pending": pending}


def _notebook(tmp_path, awf) -> str:
    nb = new_notebook()
    if awf is not None:
        nb.metadata["awf"] = awf
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return str(path)


def _written(awf):
    return parse_request(awf, "x").written()


def test_view_normalizes_the_provisioners_answer():
    v = kernels.view(FakeProvisioner(_view(request=_written({"allow_domains": ["@pypi"]}))))
    assert v["admin"]["domain_ceiling"] == ["a.example", "pypi.org", "files.pythonhosted.org"]
    assert v["request"]["allow_expanded"] == ["pypi.org", "files.pythonhosted.org"]
    assert v["effective"]["allow_domains"] == ["a.example"] and v["pending"] is None and not v["hub"]
    assert kernels.bounds(FakeProvisioner(_view())).ceiling is not None


def test_in_hub_mode_this_sides_settings_are_not_shown_as_the_bounds():
    v = kernels.view(FakeProvisioner({**_view(), "hub_mode": True}))
    assert v["hub"] and v["admin"]["domain_ceiling"] is None and v["effective"]["allow_domains"] == []
    assert kernels.bounds(FakeProvisioner({**_view(), "hub_mode": True})) is None


def _apply(tmp_path, awf, view, *, trusted=True, fail=None, force=False):
    prov = FakeProvisioner(view, fail=fail)
    live = LivePolicy(_server({"k1": prov}, trusted=trusted))
    outcomes = asyncio.run(live.apply("nb.ipynb", _notebook(tmp_path, awf), "saved", force=force))
    return prov, live, outcomes


def test_a_save_that_changes_the_request_reaches_the_kernel(tmp_path):
    prov, live, [outcome] = _apply(tmp_path, {"allow_domains": ["a.example", "b.example"]},
                                   _view(request=_written({"allow_domains": ["a.example"]})))
    assert prov.reloads and "saved" in prov.reloads[0]
    assert outcome["ok"] is True and live.results["k1"] is outcome


def test_a_save_that_changes_nothing_is_not_applied_again(tmp_path):
    prov, _, outcomes = _apply(tmp_path, {"allow_domains": ["a.example"]},
                               _view(request=_written({"allow_domains": ["a.example"]})))
    assert prov.reloads == [] and outcomes == []
    prov, _, outcomes = _apply(tmp_path, {"allow_domains": ["a.example"], "mode": "record"},
                               _view(request=_written({"allow_domains": ["a.example"]})))
    assert len(prov.reloads) == 1  # the mode changed


def test_a_pending_request_is_applied_when_trust_came_with_the_save(tmp_path):
    awf = {"allow_domains": ["a.example"]}
    prov, _, _ = _apply(tmp_path, awf, _view(pending=_written(awf)), trusted=False)
    assert prov.reloads == []  # still untrusted, same request: nothing to do
    prov, _, _ = _apply(tmp_path, awf, _view(pending=_written(awf)), trusted=True)
    assert len(prov.reloads) == 1


def test_a_refused_policy_is_reported_and_nothing_else_happens(tmp_path):
    for error in (CeilingError("asks for 'b.example', outside the ceiling", hint="ask the admin"),
                  SandboxStartError("a brokered kernel's policy changes at its next restart", hint="restart")):
        _, _, [outcome] = _apply(tmp_path, {"allow_domains": ["b.example"]}, _view(), fail=error)
        assert outcome["ok"] is False and outcome["message"] == error.message and outcome["hint"] == error.hint


def test_bad_metadata_is_reported_without_asking_the_kernel(tmp_path):
    prov, _, [outcome] = _apply(tmp_path, {"allow_domains": ["*"]}, _view())
    assert prov.reloads == [] and outcome["ok"] is False and "would allow everything" in outcome["message"]


def test_the_hook_ignores_files_and_other_paths(tmp_path):
    prov = FakeProvisioner(_view())
    live = LivePolicy(_server({"k1": prov}))

    async def save(model):
        live.post_save(model=model, os_path=_notebook(tmp_path, {"allow_domains": ["b.example"]}),
                       contents_manager=None)
        await live.settle("nb.ipynb")

    asyncio.run(save({"type": "file", "path": "nb.ipynb"}))
    asyncio.run(save({"type": "notebook", "path": "../nb.ipynb"}))
    assert prov.reloads == []
    asyncio.run(save({"type": "notebook", "path": "nb.ipynb"}))
    assert len(prov.reloads) == 1
    assert json.dumps(live.results["k1"])  # what the browser gets is JSON
