"""The prebuilt JupyterLab extension is what its sources build, and the
package installs it (and enables the server extension) without node."""

from __future__ import annotations

import glob
import importlib.util
import json
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]


def _stamp():
    spec = importlib.util.spec_from_file_location("labextension_stamp", ROOT / "scripts" / "labextension_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_build_matches_the_sources():
    assert _stamp().check() == []


def test_the_stamp_notices_a_source_change(tmp_path, monkeypatch):
    stamp = _stamp()
    recorded = json.loads(stamp.STAMP.read_text())
    src = tmp_path / "labextension"
    for f in stamp.source_files():
        target = src / f.relative_to(stamp.SOURCES)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    monkeypatch.setattr(stamp, "SOURCES", src)
    assert stamp.current()["sources"] == recorded["sources"]
    (src / "src" / "index.ts").write_text((src / "src" / "index.ts").read_text() + "\n// changed\n")
    assert stamp.current()["sources"] != recorded["sources"]


def test_installing_puts_the_extension_where_jupyterlab_finds_it():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["data-files"]
    installed = {}
    for dest, patterns in data.items():
        for pattern in patterns:
            for f in glob.glob(str(ROOT / pattern)):
                installed[f"{dest}/{Path(f).name}"] = Path(f)
    built = ROOT / "awf_kernel" / "labextension"
    for f in built.rglob("*"):
        if f.is_file() and f.name != "build-stamp.json":
            assert f"share/jupyter/labextensions/awf-kernel/{f.relative_to(built).as_posix()}" in installed
    package = json.loads((built / "package.json").read_text())
    assert package["name"] == "awf-kernel"
    assert (built / package["jupyterlab"]["_build"]["load"]).is_file()
    config = json.loads(installed["etc/jupyter/jupyter_server_config.d/awf_kernel.json"].read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"awf_kernel.jupyterlab": True}}}
    assert "awf_kernel.jupyterlab" in setuptools["packages"]


def test_the_server_extension_is_importable_where_the_config_points():
    import awf_kernel.jupyterlab as ext

    assert ext._jupyter_server_extension_points() == [{"module": "awf_kernel.jupyterlab"}]
    [paths] = ext._jupyter_labextension_paths()
    assert (Path(ext.__file__).parent / paths["src"]).resolve() == (ROOT / "awf_kernel" / "labextension")
