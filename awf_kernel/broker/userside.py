"""Filesystem work done with the user's own rights, never the broker's.

The broker runs as root, but the folders a kernel gets (its working folder,
its notebook, the placeholders awf_kernel.protect makes in them, the audit
trail it reads back) are the user's. Anything root does in a folder the user
controls can be raced (a folder swapped for a symlink to /etc between a check
and a write). So that work runs in a short helper process that drops to the
user's uid, primary gid and groups before it touches a single user path:

    python -m awf_kernel.broker.userside OP   (JSON in on stdin, JSON out on stdout)

- `prepare`: realpath the working folder and the notebook inside the user's
  notebook roots (a symlink pointing out is refused), check the notebook is a
  regular .ipynb the user owns, place the protection mounts and placeholders,
  and record the identity (device, inode) of every mount source, which the
  broker compares with what the kernel container really got;
- `release`: remove a kernel's placeholders (if untouched) and scratch folder;
- `rehold`: hand scratch folders' placeholders to the running broker;
- `logs`: read a kernel's audit trail (awf_kernel.audit, escaped).

The helper imports everything it needs before it drops privileges (the
Python installation may not be readable by the user).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
from typing import Any

import awf_kernel

from .. import audit, policy, presets, protect  # noqa: F401 - imported before dropping privileges
from ..render.pod import Mount

HELPER_TIMEOUT = 60.0


class Refused(Exception):
    """The user's paths cannot be used; the message says why (shown to the user)."""


# --- the broker's side ---------------------------------------------------------------------------

def run_as(uid: int, gid: int, gids: tuple[int, ...], op: str, payload: dict,
           timeout: float = HELPER_TIMEOUT) -> dict:
    """Run one helper op as the user; returns its result or raises Refused."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(awf_kernel.__file__)))
    request = {"uid": uid, "gid": gid, "gids": list(gids), "op": op, "payload": payload}
    try:
        done = subprocess.run([sys.executable, "-s", "-m", "awf_kernel.broker.userside"],
                              input=json.dumps(request).encode(), capture_output=True, cwd="/",
                              env={"PYTHONPATH": pkg_root, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                   "LANG": "C.UTF-8"},
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Refused(f"checking your folders took longer than {timeout:.0f} s") from None
    try:
        answer = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict):
        tail = audit.safe_text(done.stderr.decode("utf-8", "replace")[-2000:])
        raise RuntimeError(f"the broker's helper failed (exit {done.returncode}): {tail}")
    if "error" in answer:
        raise Refused(str(answer["error"]))
    return answer


# --- the helper's side ------------------------------------------------------------------------------

def become(uid: int, gid: int, gids: list[int]) -> None:
    """Drop to the user for good (when running as root); fail if it did not hold."""
    if os.geteuid() != 0:
        return  # a broker in the docker group: it works with its own rights
    os.setgroups([g for g in gids if g != 0])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SystemExit("could not become the user")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise SystemExit("privileges could be regained after dropping them")
    os.umask(0o077)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def identity_at(path: str, *, directory: bool | None = None) -> tuple[int, int, int]:
    """(device, inode, mode) of what `path` names right now, opened without
    following a final symlink and confirmed to still sit at `path`."""
    flags = os.O_PATH | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if where != path:
        raise Refused(f"{path} changed while it was being checked; try again")
    return st.st_dev, st.st_ino, st.st_mode


def notebook_roots(roots: list[str], home: str) -> list[str]:
    """The roots as real paths. A `~` root is the home's realpath (the home
    itself is the system's), plus the rest lexically: a user who turns
    ~/notebooks into a symlink to /etc does not move the root there."""
    real_home = os.path.realpath(home) if home else ""
    out = []
    for root in roots:
        if home and (root == home or root.startswith(home.rstrip("/") + "/")):
            out.append(posixpath.normpath(real_home + root[len(home):]))
        else:
            out.append(os.path.realpath(root))
    return [r for r in out if r != "/"]


def check_workdir(cwd: str, roots: list[str]) -> str:
    real = os.path.realpath(cwd)
    if not _inside(real, roots):
        raise Refused(f"the working folder {audit.safe_text(cwd)} is not inside your notebook folders "
                      f"({', '.join(roots) or 'none'})")
    try:
        _dev, _ino, mode = identity_at(real, directory=True)
    except (FileNotFoundError, NotADirectoryError):
        raise Refused(f"the working folder {audit.safe_text(cwd)} is not a folder") from None
    except PermissionError:
        raise Refused(f"you cannot open the working folder {audit.safe_text(cwd)}") from None
    if not stat.S_ISDIR(mode):
        raise Refused(f"the working folder {audit.safe_text(cwd)} is not a folder")
    return real


def check_notebook(path: str, roots: list[str], uid: int) -> str:
    real = os.path.realpath(path)
    shown = audit.safe_text(path)
    if not real.endswith(".ipynb"):
        raise Refused(f"the notebook {shown} is not a .ipynb file")
    if not _inside(real, roots):
        raise Refused(f"the notebook {shown} is not inside your notebook folders ({', '.join(roots) or 'none'})")
    try:
        fd = os.open(real, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        raise Refused(f"the notebook {shown} does not exist or cannot be opened") from None
    try:
        st = os.fstat(fd)
        where = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if where != real:
        raise Refused(f"the notebook {shown} changed while it was being checked; try again")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"the notebook {shown} is not a regular file")
    if st.st_uid != uid:
        raise Refused(f"the notebook {shown} is not yours")
    return real


def _lstat_identity(path: str | None) -> list[int] | None:
    if not path:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def prepare(p: dict) -> dict:
    """Check the user's paths and place the protections; see the module doc."""
    roots = notebook_roots(p["roots"], p["home"])
    workdir = check_workdir(p["cwd"], roots)
    notebook = check_notebook(p["notebook"], roots, p["uid"]) if p.get("notebook") else None
    scratch = p["scratch_dir"]
    os.makedirs(scratch, mode=0o700, exist_ok=False)
    mounts = [Mount(workdir, workdir)]
    if notebook and _inside(notebook, [workdir]) and notebook != workdir:
        # Read-only: code in the kernel must not edit its own metadata.awf
        # and widen its policy at the next restart.
        mounts.append(Mount(notebook, notebook, read_only=True))
    server = protect.ServerPaths(**{k: tuple(posixpath.normpath(v) + "/" for v in p["server_paths"].get(k, ()))
                                    for k in ("deny_write", "deny_read", "if_present")})
    homes = [os.path.realpath(p["home"])] if p["home"] and os.path.isdir(p["home"]) else []
    try:
        result = protect.protect(mounts, homes=homes, scratch_dir=scratch, deny_write=p["deny_write"],
                                 deny_read=p["deny_read"], server=server)
    except protect.ProtectionError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise Refused(f"not starting the kernel: {exc}") from None
    host, pid = p["holder"]
    protect.set_holder(scratch, host, pid)
    try:
        every = mounts + result.mounts
        expected = {}
        for m in every:
            if not (_inside(m.source, roots) or _inside(m.source, [scratch])):
                raise Refused(f"{audit.safe_text(m.source)} is outside your notebook folders")
            dev, ino, _ = identity_at(m.source)
            expected[m.target] = [dev, ino]
        watched = {h: _lstat_identity(h) for h in (protect.host_path(m.target, mounts) for m in result.mounts) if h}
    except (Refused, OSError) as exc:
        release({"scratch_dir": scratch})
        raise Refused(str(exc) if isinstance(exc, Refused) else f"cannot check a mount: {exc}") from None
    return {"workdir": workdir, "notebook": notebook,
            "mounts": [[m.source, m.target, m.read_only] for m in every[1:]],
            "expected": expected, "watched": watched, "warnings": result.warnings,
            "placeholders": [ph.path for ph in result.placeholders]}


def release(p: dict) -> dict:
    scratch = p["scratch_dir"]
    if not os.path.isdir(scratch) or os.path.islink(scratch):
        return {"removed": []}
    removed = protect.release_scratch(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"removed": removed}


def rehold(p: dict) -> dict:
    host, pid = p["holder"]
    done = [d for d in p["scratch_dirs"] if os.path.isdir(d) and not os.path.islink(d)
            and protect.set_holder(d, host, pid)]
    return {"reheld": done}


def logs(p: dict) -> dict:
    import pathlib

    recs = audit.read_kernel(pathlib.Path(p["folder"]))
    return {"records": recs[-int(p["limit"]):], "total": len(recs)}


OPS = {"prepare": prepare, "release": release, "rehold": rehold, "logs": logs}


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    policy.parse_domain("example.org", "warm-up")  # load the public suffix list before dropping privileges
    "b\u00fccher.example".encode("idna")  # and the IDNA codec
    become(int(request["uid"]), int(request["gid"]), [int(g) for g in request["gids"]])
    try:
        answer: Any = OPS[request["op"]](request["payload"])
    except Refused as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
