"""Where a kernel's policy request comes from: AWF_POLICY, then the notebook."""

from __future__ import annotations

import json
import logging

import pytest

from awf_kernel.errors import PolicyError
from awf_kernel.policy_source import load_request, notebook_path


def _nb(path, awf=None):
    meta = {"awf": awf} if awf is not None else {}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_awf_policy_wins_over_the_notebook(tmp_path):
    nb = _nb(tmp_path / "a.ipynb", {"allow_domains": ["from-file.example.org"]})
    req = load_request({"AWF_POLICY": '{"allow_domains": ["from-env.example.org"]}', "JPY_SESSION_NAME": str(nb)})
    assert [r.host for r in req.allow] == ["from-env.example.org"] and req.source == "AWF_POLICY"


def test_notebook_relative_to_root_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    _nb(tmp_path / "sub" / "a.ipynb", {"allow_domains": ["x.example.org"]})
    req = load_request({"JPY_SESSION_NAME": "sub/a.ipynb"}, root_dir=str(tmp_path))
    assert [r.host for r in req.allow] == ["x.example.org"]
    assert str(tmp_path / "sub" / "a.ipynb") in req.source


@pytest.mark.parametrize("session", ["console-1", "../outside.ipynb", "notes.txt", "missing.ipynb", ""])
def test_not_a_notebook_under_root_means_admin_policy_only(tmp_path, session, caplog):
    root = tmp_path / "root"
    root.mkdir()
    _nb(tmp_path / "outside.ipynb", {"allow_domains": ["evil.example.org"]})
    (root / "notes.txt").write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert load_request({"JPY_SESSION_NAME": session}, root_dir=str(root)) is None
    if session:
        assert "admin policy only" in caplog.text


def test_symlink_out_of_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    target = _nb(tmp_path / "secret.ipynb", {"allow_domains": ["evil.example.org"]})
    (root / "link.ipynb").symlink_to(target)
    assert notebook_path("link.ipynb", str(root)) is None


def test_notebook_without_awf_metadata_is_no_request(tmp_path):
    nb = _nb(tmp_path / "plain.ipynb")
    assert load_request({"JPY_SESSION_NAME": str(nb)}) is None


def test_broken_notebook_is_a_clear_error(tmp_path):
    nb = tmp_path / "broken.ipynb"
    nb.write_text("{not json")
    with pytest.raises(PolicyError, match="cannot read notebook"):
        load_request({"JPY_SESSION_NAME": str(nb)})
