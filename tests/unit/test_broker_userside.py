"""The broker's path checks and protection placing (run here with the test's own rights)."""

from __future__ import annotations

import json
import os

import pytest

from awf_kernel.broker import userside
from awf_kernel.broker.userside import Refused


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home" / "alice"
    (h / "project").mkdir(parents=True)
    (h / "project" / "a.ipynb").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.ipynb").write_text("{}")
    return h


def test_roots_follow_the_home_but_not_links_the_user_makes(tmp_path, home):
    real = tmp_path / "data" / "alice"
    real.parent.mkdir()
    os.symlink(home, real)  # a home that is itself a symlink (made by the admin) is followed
    assert userside.notebook_roots([str(real)], str(real)) == [str(home)]
    os.symlink(tmp_path / "elsewhere", home / "notebooks")  # the user's own link moves nothing
    assert userside.notebook_roots([str(home / "notebooks")], str(home)) == [str(home / "notebooks")]
    assert userside.notebook_roots(["/"], str(home)) == []


def test_workdir_inside_the_roots_only(tmp_path, home):
    roots = [str(home)]
    assert userside.check_workdir(str(home / "project"), roots) == str(home / "project")
    assert userside.check_workdir(str(home / "project" / ".." / "project"), roots) == str(home / "project")
    os.symlink(tmp_path / "elsewhere", home / "escape")
    for bad in (str(home / "escape"), str(tmp_path / "elsewhere"), "/", "/etc", str(home) + "-other"):
        with pytest.raises(Refused, match="not inside your notebook folders"):
            userside.check_workdir(bad, roots)
    with pytest.raises(Refused, match="not a folder"):
        userside.check_workdir(str(home / "project" / "a.ipynb"), roots)
    with pytest.raises(Refused, match="not a folder"):
        userside.check_workdir(str(home / "missing"), roots)


def test_notebook_is_a_regular_ipynb_of_the_user_inside_the_roots(tmp_path, home):
    roots, uid = [str(home)], os.getuid()
    nb = str(home / "project" / "a.ipynb")
    assert userside.check_notebook(nb, roots, uid) == nb
    os.symlink(tmp_path / "elsewhere" / "b.ipynb", home / "stolen.ipynb")
    with pytest.raises(Refused, match="not inside your notebook folders"):
        userside.check_notebook(str(home / "stolen.ipynb"), roots, uid)
    with pytest.raises(Refused, match="not yours"):
        userside.check_notebook(nb, roots, uid + 1)
    (home / "dir.ipynb").mkdir()
    with pytest.raises(Refused, match="not a regular file"):
        userside.check_notebook(str(home / "dir.ipynb"), roots, uid)
    os.mkfifo(home / "fifo.ipynb")
    with pytest.raises(Refused, match="not a regular file"):
        userside.check_notebook(str(home / "fifo.ipynb"), roots, uid)
    os.symlink(home / "project" / ".bashrc", home / "x.ipynb")
    with pytest.raises(Refused):
        userside.check_notebook(str(home / "x.ipynb"), roots, uid)


def test_prepare_protects_and_release_removes(tmp_path, home):
    scratch_base = tmp_path / "scratch"
    scratch_base.mkdir()
    scratch = scratch_base / "awf-kernel-k1-protect"
    out = userside.prepare({
        "uid": os.getuid(), "home": str(home), "roots": [str(home)], "cwd": str(home),
        "notebook": str(home / "project" / "a.ipynb"), "scratch_dir": str(scratch), "deny_write": [],
        "deny_read": ["~/secret.txt"], "server_paths": {"deny_write": [str(home / "venv")]},
        "holder": ["somehost", 1]})
    assert out["workdir"] == str(home) and out["notebook"] == str(home / "project" / "a.ipynb")
    mounts = {t: (s, ro) for s, t, ro in out["mounts"]}
    assert mounts[str(home / "project" / "a.ipynb")] == (str(home / "project" / "a.ipynb"), True)
    assert mounts[str(home / ".bashrc")][1] is True
    assert (home / ".bashrc").exists() and str(home / ".bashrc") in out["placeholders"]
    assert (home / "venv").is_dir()  # the user's server's folder is held too
    assert set(out["expected"]) == {str(home), *mounts}
    assert json.loads((scratch / "placeholders.json").read_text())["server"] == ["somehost", 1]
    gone = userside.release({"scratch_dir": str(scratch)})["removed"]
    assert str(home / ".bashrc") in gone and not (home / ".bashrc").exists()
    assert not scratch.exists()
    assert sorted(p.name for p in home.iterdir()) == ["project"]
