"""awf_kernel.protect: which mounts keep a kernel from planting code or reading
credentials through the folders it can write. Real folders in tmp_path, no Docker."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess

import pytest
from traitlets import TraitError

from awf_kernel import kernelspec, protect
from awf_kernel.protect import ProtectionError, ServerPaths
from awf_kernel.provisioner import AWFProvisioner
from awf_kernel.render.pod import Mount

NO_SERVER = ServerPaths()  # most tests look at the mandatory lists only


def make(root, files=(), dirs=()):
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f"content of {f}\n")
    return root


@pytest.fixture
def home(tmp_path):
    return make(tmp_path / "home", files=[".bashrc", ".ssh/id_rsa", ".aws/credentials", ".netrc",
                                          ".config/gh/hosts.yml", "data.csv"],
                dirs=[".config/autostart", "work"])


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / "scratch"
    d.mkdir()
    return d


def run(mounts, homes, scratch, **kw):
    kw.setdefault("server", NO_SERVER)
    return protect.protect(mounts, homes=[str(h) for h in homes], scratch_dir=str(scratch), **kw)


def by_target(result):
    targets = [m.target for m in result.mounts]
    assert len(targets) == len(set(targets)), "a target mounted twice"
    return {m.target: m for m in result.mounts}


# --- existing entries -------------------------------------------------------------

def test_existing_entries_are_read_only_and_secrets_hidden(home, scratch):
    h = str(home)
    mounts = by_target(run([Mount(h, h)], [home], scratch))
    assert mounts[f"{h}/.bashrc"] == Mount(f"{h}/.bashrc", f"{h}/.bashrc", True)
    assert mounts[f"{h}/.config"] == Mount(f"{h}/.config", f"{h}/.config", True)
    # secrets: an empty read-only folder or file from the scratch folder
    assert mounts[f"{h}/.ssh"] == Mount(f"{scratch}/empty-folder", f"{h}/.ssh", True)
    assert mounts[f"{h}/.aws"] == Mount(f"{scratch}/empty-folder", f"{h}/.aws", True)
    assert mounts[f"{h}/.netrc"] == Mount(f"{scratch}/empty-file", f"{h}/.netrc", True)
    assert mounts[f"{h}/.config/gh"].source == f"{scratch}/empty-folder"  # hidden inside read-only
    assert os.listdir(scratch / "empty-folder") == [] and (scratch / "empty-file").stat().st_size == 0
    # ordinary content is left writable
    assert f"{h}/data.csv" not in mounts and f"{h}/work" not in mounts
    assert all(m.read_only for m in mounts.values())


def test_parents_come_first_and_nothing_is_repeated(home, scratch):
    h = str(home)
    result = run([Mount(h, h)], [home, home], scratch,
                 deny_write=["~/.bashrc", "~/.config/autostart/", "/" + h.lstrip("/") + "/.bashrc"],
                 deny_read=["~/.ssh/", "~/.ssh/id_rsa"])
    targets = [m.target for m in result.mounts]
    assert targets.count(f"{h}/.bashrc") == 1 and targets.count(f"{h}/.ssh") == 1
    assert f"{h}/.ssh/id_rsa" not in targets          # inside a hidden folder already
    assert f"{h}/.config/autostart" not in targets    # inside a read-only folder already
    assert targets.index(f"{h}/.config") < targets.index(f"{h}/.config/gh")
    depths = [t.count("/") for t in targets]
    assert depths == sorted(depths)


def test_mapping_through_a_mount_with_another_target(home, scratch):
    h = str(home)
    mounts = by_target(run([Mount(h, "/home/jovyan")], [home], scratch))
    assert mounts["/home/jovyan/.bashrc"] == Mount(f"{h}/.bashrc", "/home/jovyan/.bashrc", True)
    assert mounts["/home/jovyan/.ssh"].source == f"{scratch}/empty-folder"
    assert not any(t.startswith(h) for t in mounts)


def test_entries_outside_every_mount_are_ignored(home, scratch):
    work = str(home / "work")
    result = run([Mount(work, work)], [home], scratch)
    assert all(m.target.startswith(work + "/") for m in result.mounts)
    assert not (home / ".profile").exists()  # the home is not mounted: nothing is made there
    # relative entries apply in the mount's root
    assert {os.path.basename(p.path) for p in result.placeholders} == {".git", ".envrc"}


def test_a_writable_file_mount_has_no_root_entries(tmp_path, scratch):
    f = tmp_path / "shared.db"
    f.write_text("")
    assert run([Mount(str(f), "/data/shared.db")], [], scratch).mounts == []


def test_read_only_mounts_need_nothing(home, scratch):
    h = str(home)
    assert run([Mount(h, h, read_only=True)], [home], scratch).mounts == []


def test_another_mount_deeper_decides_what_is_seen(home, tmp_path, scratch):
    h, other = str(home), make(tmp_path / "other", files=["x"])
    mounts = by_target(run([Mount(h, h), Mount(str(other), f"{h}/.config", read_only=True)], [home], scratch))
    assert f"{h}/.config" not in mounts and f"{h}/.config/gh" not in mounts  # shadowed by the admin's mount
    assert f"{h}/.bashrc" in mounts


# --- missing entries ----------------------------------------------------------------

def test_missing_entries_are_held_by_placeholders(home, scratch):
    h = str(home)
    os.chown(home, 1234, 1234) if os.geteuid() == 0 else None
    result = run([Mount(h, h)], [home], scratch)
    held = {os.path.relpath(p.path, h): p for p in result.placeholders}
    assert held[".profile"].is_dir is False and (home / ".profile").is_file()
    assert held[".jupyter"].is_dir is True and (home / ".jupyter").is_dir()
    assert held[".local"].is_dir and held[".git"].is_dir  # a missing intermediate folder is held whole
    assert ".git/hooks" not in held and ".ssh" not in held and ".bashrc" not in held
    mounts = by_target(result)
    assert mounts[f"{h}/.profile"] == Mount(f"{h}/.profile", f"{h}/.profile", True)
    assert (home / ".profile").read_text() == ""
    assert "placeholder" in (home / ".bash_profile").read_text()  # reads ~/.profile as bash would
    if os.geteuid() == 0:
        assert (home / ".profile").stat().st_uid == 1234 and (home / ".jupyter").stat().st_gid == 1234
    # the record lets the provisioner remove exactly what it made
    assert protect.remove_placeholders(result.placeholders) == []
    assert not (home / ".profile").exists() and not (home / ".jupyter").exists()
    assert (home / ".bashrc").exists()


def test_placeholders_changed_on_the_host_are_kept(home, scratch):
    h = str(home)
    result = run([Mount(h, h)], [home], scratch)
    (home / ".profile").write_text("export PATH=$PATH:~/bin\n")   # the user's own edit
    (home / ".cache" / "pip").mkdir()                              # a host tool filled it
    os.unlink(home / ".zshrc")                                     # and one is already gone
    kept = protect.remove_placeholders(result.placeholders)
    assert sorted(os.path.relpath(k, h) for k in kept) == [".cache", ".profile"]
    assert (home / ".profile").read_text().startswith("export")


def test_only_inside_an_existing_folder_of_the_mount(tmp_path, scratch):
    root = make(tmp_path / "proj", files=["a.txt"])
    result = run([Mount(str(root), str(root))], [tmp_path / "no-such-home"], scratch,
                 deny_write=["/elsewhere/x", "deep/er/name/"])
    held = sorted(os.path.relpath(p.path, root) for p in result.placeholders)
    assert held == [".envrc", ".git", "deep"]  # the first missing folder holds everything below it
    assert (root / "deep").is_dir() and not (root / "deep" / "er").exists()


def test_a_file_in_the_way_is_protected_itself(tmp_path, scratch):
    """A worktree's `.git` file points at the repository: rewriting it would
    point git at the kernel's own hooks."""
    root = make(tmp_path / "wt", files=[".git"])
    mounts = by_target(run([Mount(str(root), str(root))], [], scratch))
    assert mounts[f"{root}/.git"] == Mount(f"{root}/.git", f"{root}/.git", True)


def test_failed_start_removes_what_it_made(home, scratch, monkeypatch):
    made = []
    real = protect.make_placeholder

    def flaky(path, is_dir):
        if len(made) == 3:
            raise OSError(errno.EIO, "disk on fire")
        made.append(path)
        return real(path, is_dir)

    monkeypatch.setattr(protect, "make_placeholder", flaky)
    with pytest.raises(ProtectionError, match="disk on fire"):
        run([Mount(str(home), str(home))], [home], scratch)
    assert made and not any(os.path.exists(p) for p in made)


# --- nested repositories, rename guards -----------------------------------------------

def test_git_in_the_mount_root_and_rename_guards(tmp_path, scratch):
    root = make(tmp_path / "proj", files=[".git/config", ".git/HEAD", "sub/.git/config"], dirs=[".git/hooks"])
    r = str(root)
    mounts = by_target(run([Mount(r, r)], [], scratch))
    assert mounts[f"{r}/.git/hooks"] == Mount(f"{r}/.git/hooks", f"{r}/.git/hooks", True)
    assert mounts[f"{r}/.git/config"] == Mount(f"{r}/.git/config", f"{r}/.git/config", True)
    # .git itself stays writable but becomes a mountpoint: `mv .git x` fails with EBUSY
    assert mounts[f"{r}/.git"] == Mount(f"{r}/.git", f"{r}/.git", False)
    assert f"{r}/sub/.git/config" not in mounts  # only the mount root's repository


def test_admin_entry_deeper_down_guards_each_folder_on_the_way(home, scratch):
    h = str(home)
    make(home, files=["projects/secret/plan.txt"])
    mounts = by_target(run([Mount(h, h)], [home], scratch, deny_write=["~/projects/secret/"]))
    assert mounts[f"{h}/projects/secret"].read_only
    assert mounts[f"{h}/projects"] == Mount(f"{h}/projects", f"{h}/projects", False)
    # no guards inside folders that are read-only anyway
    assert f"{h}/.config" in mounts and all(m.read_only for t, m in mounts.items() if t.startswith(f"{h}/.config"))


# --- symlinks --------------------------------------------------------------------------

def test_a_replaceable_symlinked_dotfile_refuses(home, scratch):
    make(home, files=["dotfiles/bashrc"])
    (home / ".bashrc").unlink()
    (home / ".bashrc").symlink_to("dotfiles/bashrc")
    with pytest.raises(ProtectionError, match=r"\.bashrc is a symlink"):
        run([Mount(str(home), str(home))], [home], scratch)
    assert not (home / ".profile").exists()  # refused before anything was made


def test_a_symlink_out_of_the_mount_refuses_too(home, tmp_path, scratch):
    """~/.cache -> /scratch: the kernel could delete the link and make a real ~/.cache."""
    (tmp_path / "fast").mkdir()
    (home / ".cache").symlink_to(tmp_path / "fast")
    with pytest.raises(ProtectionError, match=r"\.cache is a symlink"):
        run([Mount(str(home), str(home))], [home], scratch)
    assert os.listdir(tmp_path / "fast") == []


def test_symlinks_inside_protected_folders_protect_their_targets(home, tmp_path, scratch):
    """A dotfile manager: ~/.config/nvim -> ~/dotfiles/nvim. The link cannot be
    replaced (inside read-only ~/.config) but its target must not be written."""
    h = str(home)
    make(home, files=["dotfiles/nvim/init.lua"])
    (home / ".config/nvim").symlink_to(home / "dotfiles/nvim")
    (home / ".config/missing").symlink_to(home / "dotfiles/not-yet")       # dangling, inside the mount
    (home / ".config/outside").symlink_to(tmp_path / "outside" / "app")   # leads out of the mount
    (tmp_path / "outside").mkdir()
    mounts = by_target(run([Mount(h, h)], [home], scratch))
    assert mounts[f"{h}/dotfiles/nvim"] == Mount(f"{h}/dotfiles/nvim", f"{h}/dotfiles/nvim", True)
    assert mounts[f"{h}/dotfiles/not-yet"].read_only and (home / "dotfiles/not-yet").exists()
    assert mounts[f"{h}/dotfiles"] == Mount(f"{h}/dotfiles", f"{h}/dotfiles", False)  # rename guard
    assert not (tmp_path / "outside" / "app").exists()  # never made outside the mount


def test_links_in_caches_do_not_lock_projects(home, scratch):
    h = str(home)
    make(home, files=["work/project/main.py"], dirs=[".cache/tool"])
    (home / ".cache/tool/last-project").symlink_to(home / "work/project")
    mounts = by_target(run([Mount(h, h)], [home], scratch))
    assert f"{h}/work/project" not in mounts and f"{h}/work" not in mounts


def test_an_entry_reached_through_a_link_inside_a_protected_folder(home, scratch):
    """~/.config/gcloud -> ~/secrets/gcloud: the target is hidden."""
    h = str(home)
    make(home, files=["secrets/gcloud/credentials.db"])
    (home / ".config/gcloud").symlink_to(home / "secrets/gcloud")
    mounts = by_target(run([Mount(h, h)], [home], scratch))
    assert mounts[f"{h}/secrets/gcloud"].source == f"{scratch}/empty-folder"


def test_if_present_entries_only_warn(home, scratch):
    h = str(home)
    (home / "nvim-install").mkdir()
    (home / ".nvm").symlink_to(home / "nvim-install")
    result = run([Mount(h, h)], [home], scratch)
    assert any(".nvm is a symlink" in w for w in result.warnings)
    assert not (home / ".pyenv").exists()  # missing installations are not held


# --- a whole writable folder inside a protected one ----------------------------------------

def test_a_writable_folder_inside_a_protected_one_refuses(home, scratch):
    inner = make(home, dirs=[".jupyter/lab"]) / ".jupyter" / "lab"
    with pytest.raises(ProtectionError, match=r"inside .*\.jupyter"):
        run([Mount(str(inner), str(inner))], [home], scratch)
    with pytest.raises(ProtectionError, match="may not read"):
        run([Mount(str(home / ".ssh"), "/keys")], [home], scratch)
    run([Mount(str(home / ".ssh"), "/keys", read_only=True)], [home], scratch)  # the admin's own read-only mount


def test_a_writable_folder_inside_an_installation_warns(home, scratch):
    inner = make(home, dirs=[".nvm/work"]) / ".nvm" / "work"
    result = run([Mount(str(inner), str(inner))], [home], scratch)
    assert any(".nvm" in w for w in result.warnings)


# --- the server's own folders ---------------------------------------------------------------

def test_jupyter_and_python_folders_of_the_server(home, scratch, monkeypatch, tmp_path):
    h = str(home)
    monkeypatch.setenv("HOME", h)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "XDG_CONFIG_HOME",
                "XDG_DATA_HOME", "XDG_CACHE_HOME", "IPYTHONDIR", "JUPYTER_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", f"{h}/work/share/jupyter")
    monkeypatch.setenv("PATH", f"{h}/work/bin:/usr/bin")
    make(home, dirs=["work/bin"])
    server = protect.server_paths()
    assert f"{h}/.jupyter/" in server.deny_write and f"{h}/.local/share/jupyter/runtime/" in server.deny_read
    assert f"{h}/work/bin/" in server.if_present
    result = protect.protect([Mount(h, h)], homes=[h], scratch_dir=str(scratch), server=server)
    mounts = by_target(result)
    assert mounts[f"{h}/work/bin"].read_only                             # on the server's PATH
    assert mounts[f"{h}/work/share"].source == f"{h}/work/share"         # JUPYTER_PATH, held
    assert (home / "work/share").is_dir() and mounts[f"{h}/work/share"].read_only
    assert mounts[f"{h}/work"] == Mount(f"{h}/work", f"{h}/work", False)
    protect.remove_placeholders(result.placeholders)


# --- entries ---------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, why", [
    ("", "empty"), ("  ", "empty"), ("a\0b", "NUL"), ("../x", r"'\.\.'"), ("~/a/../../b", r"'\.\.'"),
    ("~bob/.ssh", "~user"), ("/", "every folder"), (".", "every folder"),
])
def test_bad_entries_are_refused_by_name(entry, why):
    with pytest.raises(ValueError, match=why):
        protect.check_entry(entry)
    with pytest.raises(TraitError, match=re.escape(f"deny_write: {entry!r}")):
        AWFProvisioner(deny_write=["~/.fine", entry])
    with pytest.raises(kernelspec.SettingError, match=re.escape("--set 'deny_read=") + ".*" +
                       re.escape(f": deny_read: {entry!r}")):
        kernelspec.parse_setting("deny_read=" + json.dumps([entry]))


def test_good_entries():
    assert protect.check_entries(["~/.x", "/srv/keys/", ".git/hooks", "~"], "deny_read") == \
        ["~/.x", "/srv/keys/", ".git/hooks", "~"]
    assert kernelspec.parse_setting("deny_write=~/projects/secret/,/srv/shared") == \
        ("deny_write", ["~/projects/secret/", "/srv/shared"])


def test_expand():
    assert protect.expand("~/.ssh/", ["/h1", "/h2"], ["/r"]) == [("/h1/.ssh", True), ("/h2/.ssh", True)]
    assert protect.expand(".git/hooks/", ["/h"], ["/r1", "/r2"]) == [("/r1/.git/hooks", True),
                                                                     ("/r2/.git/hooks", True)]
    assert protect.expand("/srv/x", ["/h"], ["/r"]) == [("/srv/x", False)]
    assert protect.expand("~/.bashrc", [], ["/r"]) == []


def test_home_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    homes = protect.home_dirs(kernel_uid=os.getuid())
    assert homes[0] == str(tmp_path) and len(homes) == len(set(homes))
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    assert str(tmp_path / "missing") not in protect.home_dirs(kernel_uid=987654)


# --- two kernels in one folder ------------------------------------------------------------

def test_a_second_kernel_adopts_the_first_ones_placeholders(home, tmp_path):
    """Removing a file that is a mountpoint in another kernel's namespace
    detaches that mount: the kernel that stops first must leave placeholders
    the other still relies on, and the last one removes them."""
    h = str(home)
    (home / ".ssh" / "id_rsa").unlink()
    (home / ".ssh").rmdir()
    temp = tmp_path / "temp"
    first, second = temp / "awf-kernel-aaaaaaaa-protect-1", temp / "awf-kernel-bbbbbbbb-protect-2"
    first.mkdir(parents=True)
    second.mkdir()
    a = run([Mount(h, h)], [home], first)
    made = {p.path for p in a.placeholders}
    assert f"{h}/.profile" in made and f"{h}/.ssh" in made
    b = run([Mount(h, h)], [home], second)
    assert {p.path for p in b.placeholders} == made  # adopted: .profile read-only, .ssh hidden
    assert by_target(b)[f"{h}/.ssh"].source == f"{second}/empty-folder"
    assert protect.remove_placeholders(a.placeholders, str(first)) == []
    assert (home / ".profile").exists() and (home / ".ssh").is_dir()  # still used by the second
    assert protect.remove_placeholders(b.placeholders, str(second)) == []
    assert not (home / ".profile").exists() and not (home / ".ssh").exists()
    assert protect.MANIFEST not in os.listdir(first) + os.listdir(second)


def test_a_stale_list_does_not_keep_new_placeholders(home, tmp_path):
    h = str(home)
    temp = tmp_path / "temp"
    dead, live = temp / "awf-kernel-dddddddd-protect-x", temp / "awf-kernel-eeeeeeee-protect-y"
    dead.mkdir(parents=True)
    live.mkdir()
    a = run([Mount(h, h)], [home], dead)
    protect.remove_placeholders(a.placeholders)  # gone, but the list stays behind
    b = run([Mount(h, h)], [home], live)
    # inode numbers are reused at once; the modification time tells them apart
    assert protect.remove_placeholders(b.placeholders, str(live)) == []
    assert not (home / ".profile").exists()


def test_lists_of_dead_servers_are_ignored(home, tmp_path):
    """A server killed hard leaves its placeholders and its list (until
    `awf-kernel gc`): the next kernel there adopts them and removes them when
    it stops; the dead list does not keep them alive."""
    h = str(home)
    temp = tmp_path / "temp"
    dead, live = temp / "awf-kernel-dddddddd-protect-x", temp / "awf-kernel-eeeeeeee-protect-y"
    dead.mkdir(parents=True)
    live.mkdir()
    run([Mount(h, h)], [home], dead)
    child = subprocess.Popen(["true"])
    child.wait()
    doc = json.loads((dead / protect.MANIFEST).read_text())
    doc["server"][1] = child.pid  # that server is gone
    (dead / protect.MANIFEST).write_text(json.dumps(doc))
    b = run([Mount(h, h)], [home], live)
    assert f"{h}/.profile" in {p.path for p in b.placeholders}  # adopted from the dead kernel
    assert protect.remove_placeholders(b.placeholders, str(live)) == []
    assert not (home / ".profile").exists() and not (home / ".jupyter").exists()


def test_gc_releases_placeholders_a_crashed_server_left(tmp_path):
    """A server killed hard leaves its scratch folder listing the placeholders
    it made; `gc` removes the untouched ones and keeps one the user changed."""
    import dataclasses
    import json

    from awf_kernel import protect

    home = tmp_path / "home"
    home.mkdir()
    untouched = protect.make_placeholder(str(home / ".profile"), is_dir=False)
    changed = protect.make_placeholder(str(home / ".ssh"), is_dir=True)
    (home / ".ssh" / "id_ed25519").write_text("the user's key, made while the kernel ran")
    scratch = tmp_path / "awf-kernel-deadbeef-protect-x"
    scratch.mkdir()
    (scratch / protect.MANIFEST).write_text(json.dumps({
        "server": ["elsewhere", 1],
        "placeholders": [dataclasses.asdict(untouched), dataclasses.asdict(changed)]}))
    assert protect.release_scratch(str(scratch)) == [str(home / ".profile")]
    assert not (home / ".profile").exists() and (home / ".ssh" / "id_ed25519").exists()
