"""The prebuilt JupyterLab extension's stamp: which sources it was built from.

awf_kernel/labextension/ (the built files, committed so installing the wheel
needs no node) carries build-stamp.json: a hash of labextension/'s sources and
one of every built file. scripts/build-labextension.sh writes it after a build;
tests/unit/test_labextension_build.py recomputes both, so a source change
without a rebuild (or a hand-edited bundle) fails the tests.

    python3 scripts/labextension_stamp.py write | check
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "labextension"
BUILT = ROOT / "awf_kernel" / "labextension"
STAMP = BUILT / "build-stamp.json"
SOURCE_FILES = ("package.json", "tsconfig.json", "yarn.lock")
SOURCE_DIRS = ("src", "style")


def _digest(files: list[Path], base: Path) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def source_files() -> list[Path]:
    files = [SOURCES / name for name in SOURCE_FILES]
    for d in SOURCE_DIRS:
        files += [p for p in (SOURCES / d).rglob("*") if p.is_file()]
    return sorted(files)


def built_files() -> list[Path]:
    return sorted(p for p in BUILT.rglob("*") if p.is_file() and p != STAMP)


def current() -> dict:
    return {"sources": _digest(source_files(), SOURCES), "built": _digest(built_files(), BUILT)}


def write() -> None:
    STAMP.write_text(json.dumps(current(), indent=1) + "\n")


def check() -> list[str]:
    """What is wrong with the committed build, or [] when it matches the sources."""
    try:
        recorded = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return [f"{STAMP.relative_to(ROOT)} is missing: run scripts/build-labextension.sh"]
    now, problems = current(), []
    if recorded.get("sources") != now["sources"]:
        problems.append("labextension/ changed since the last build: run scripts/build-labextension.sh "
                        "and commit awf_kernel/labextension/")
    if recorded.get("built") != now["built"]:
        problems.append("awf_kernel/labextension/ is not what the last build wrote: run "
                        "scripts/build-labextension.sh and commit it")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        write()
    elif sys.argv[1:] == ["check"]:
        problems = check()
        print("\n".join(problems) or "the prebuilt extension matches its sources")
        sys.exit(1 if problems else 0)
    else:
        sys.exit(__doc__)
