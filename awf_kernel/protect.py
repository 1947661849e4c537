"""What a kernel may not do to the folders it can write: the extra mounts that
keep host files out of its reach.

The kernel gets the notebook's folder (and the admin's read-write
`extra_mounts`) read-write at the same path. That folder is very often the
user's home: from a cell, hostile code could otherwise plant code that runs
outside the sandbox later (shell startup files, Jupyter config and kernel
specs, SSH authorized_keys, git hooks, ~/.local/bin ...) or read credential
stores and send them to an allowed domain. The network sandbox does not help
with either, so the mount table must.

The tools, all plain bind mounts layered over the writable mount:

- a path the kernel must not change is bind-mounted read-only over itself;
- a path the kernel must not read gets an empty, read-only folder or file
  mounted over it (it is write-protected too);
- a path that must not be *created* (a missing ~/.bashrc, ~/.ssh) gets an
  empty placeholder made on the host first, then mounted read-only. The
  provisioner removes the placeholders it made when the kernel stops, if they
  are still untouched;
- every folder between a mount's root and a protected path is made a
  mountpoint too (a read-write bind of itself): renaming a mountpoint fails
  with EBUSY, so `mv .git x; mkdir -p .git/hooks` cannot escape a protection.

Bind mounts cannot be placed on a symlink (Docker follows it), and the kernel
could replace a symlink it can reach with a file of its own. So a protected
entry reached through a symlink the kernel could replace is refused (the
kernel does not start) rather than protected in name only.

Entries (`deny_write`, `deny_read` and the defaults below) are written as
`~/x` (in each home folder that matters), an absolute path, or a bare
relative name like `.git/hooks` (in the root of every writable mount). A
trailing `/` says the entry is a folder: a missing folder entry is held by an
empty folder, any other missing entry by an empty file.

No Docker here: paths in, `Mount`s and placeholder records out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import posixpath
import pwd
import site
import socket
import stat
import sys
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from .render.pod import Mount

# --- the mandatory lists (an admin can add entries, never remove these) ------

# Code planted here runs outside the sandbox later: shells, desktops, Jupyter
# itself, git, package managers, editors, REPLs. Held even when missing.
DENY_WRITE: tuple[str, ...] = (
    # Jupyter and IPython: config, kernel specs (the next kernel unsandboxed),
    # the server's runtime dir, startup files
    "~/.jupyter/", "~/.ipython/",
    # XDG: ~/.local/bin on PATH, share/jupyter, share/applications, user site
    # packages (.pth files run at every Python start); ~/.config/autostart,
    # systemd user units, git, fish, pip ...; caches that get installed from
    "~/.local/", "~/.config/", "~/.cache/",
    # logins and shells
    "~/.ssh/", "~/.gnupg/", "~/.pam_environment", "~/.forward", "~/bin/",
    "~/.profile", "~/.bashrc", "~/.bash_profile", "~/.bash_login", "~/.bash_logout",
    "~/.bash_aliases", "~/.bashrc.d/",
    "~/.zshrc", "~/.zshenv", "~/.zprofile", "~/.zlogin", "~/.zlogout",
    "~/.inputrc",
    # X sessions
    "~/.xprofile", "~/.xinitrc", "~/.xsession", "~/.xsessionrc",
    # version control (config runs commands: core.fsmonitor, aliases, hooks)
    "~/.gitconfig", "~/.git/", "~/.hgrc",
    # package managers (index URLs, install scripts)
    "~/.npmrc", "~/.yarnrc", "~/.yarnrc.yml", "~/.pypirc", "~/.pip/", "~/.condarc", "~/.cargo/",
    # editors, terminals, REPLs that run their startup files
    "~/.vimrc", "~/.vim/", "~/.emacs", "~/.emacs.d/", "~/.tmux.conf", "~/.screenrc",
    "~/.Rprofile", "~/.Renviron", "~/.psqlrc", "~/.sqliterc", "~/.my.cnf", "~/.gdbinit", "~/.irbrc",
    # download tools, credentials, clouds, containers
    "~/.wgetrc", "~/.curlrc", "~/.netrc", "~/.docker/", "~/.kube/", "~/.aws/", "~/.azure/",
    # browsers and certificate stores
    "~/.mozilla/", "~/.pki/",
    # in the root of every writable mount: the repository's hooks and config,
    # direnv's per-folder script
    ".git/hooks/", ".git/config", ".envrc",
)

# Same kind, protected only when present: tool installations and startup files
# of less common tools. A missing one is not held by a placeholder (no clutter
# of empty folders), and one that would cover a whole writable mount, or is
# reached through a replaceable symlink, only gets a warning.
DENY_WRITE_IF_PRESENT: tuple[str, ...] = (
    "~/.kshrc", "~/.mkshrc", "~/.cshrc", "~/.tcshrc", "~/.login", "~/.logout",
    "~/.zcompdump", "~/.oh-my-zsh/", "~/.zsh/", "~/.gnomerc", "~/.Xclients",
    "~/.spacemacs", "~/.doom.d/", "~/.lldbinit", "~/.ghci", "~/.octaverc", "~/.sbclrc",
    "~/.guile", "~/.perldb", "~/.pryrc", "~/.pydistutils.cfg",
    "~/.m2/", "~/.gradle/", "~/.sbt/", "~/.ivy2/", "~/.lein/", "~/.rustup/", "~/.julia/",
    "~/.nvm/", "~/.pyenv/", "~/.rbenv/", "~/.sdkman/", "~/.volta/", "~/.deno/", "~/.bun/",
    "~/.conda/", "~/miniconda3/", "~/anaconda3/", "~/miniforge3/", "~/mambaforge/",
    "~/.virtualenvs/", "~/.nix-profile/", "~/.vscode/", "~/.vscode-server/",
    "~/.thunderbird/", "~/.subversion/", "~/.terraform.d/",
)

# Credentials and other secrets: the kernel sees an empty folder or file there
# (which it cannot write either). Only existing entries need hiding; a missing
# one has nothing to read (use deny_write to stop a kernel creating it).
DENY_READ: tuple[str, ...] = (
    "~/.ssh/", "~/.gnupg/", "~/.password-store/", "~/.pki/",
    "~/.aws/", "~/.azure/", "~/.config/gcloud/", "~/.oci/", "~/.kube/", "~/.minikube/",
    "~/.docker/", "~/.config/containers/auth.json", "~/.terraform.d/", "~/.terraformrc",
    "~/.vault-token", "~/.boto", "~/.s3cfg", "~/.databrickscfg", "~/.kaggle/",
    "~/.huggingface/", "~/.cache/huggingface/token", "~/.config/rclone/", "~/.config/op/",
    "~/.config/doctl/", "~/.config/hcloud/", "~/.config/openstack/",
    "~/.netrc", "~/.authinfo", "~/.authinfo.gpg", "~/.git-credentials", "~/.config/git/credentials",
    "~/.config/gh/", "~/.config/hub", "~/.config/glab-cli/", "~/.subversion/auth/",
    "~/.pgpass", "~/.my.cnf", "~/.mylogin.cnf", "~/.npmrc", "~/.pypirc",
    "~/.cargo/credentials", "~/.cargo/credentials.toml", "~/.gradle/gradle.properties",
    "~/.m2/settings.xml", "~/.m2/settings-security.xml",
    "~/.local/share/keyrings/", "~/.local/share/kwalletd/", "~/.local/share/jupyter/runtime/",
    "~/.mozilla/", "~/.thunderbird/", "~/.config/google-chrome/", "~/.config/chromium/",
    "~/.config/BraveSoftware/", "~/.config/microsoft-edge/", "~/.config/vivaldi/",
    "~/.Xauthority", "~/.ICEauthority",
    # histories: typed passwords, tokens in `export` lines, past cells
    "~/.bash_history", "~/.zsh_history", "~/.python_history", "~/.psql_history",
    "~/.mysql_history", "~/.sqlite_history", "~/.node_repl_history",
    "~/.local/share/fish/fish_history", "~/.ipython/profile_default/history.sqlite",
)

# A placeholder that only exists while a kernel runs must not change what the
# user's own tools do. An empty ~/.bash_profile would stop login shells from
# reading ~/.profile, an empty ~/.inputrc would drop /etc/inputrc, an empty
# ~/.vimrc would drop Vim's defaults: these placeholders say what they are and
# read what the tool would have read without them. Every other one is empty.
_NOTE = "awf-kernel placeholder: stops a sandboxed kernel from creating this file; removed when the kernel stops."
PLACEHOLDER_TEXT: dict[str, str] = {
    ".bash_profile": f"# {_NOTE}\n"
                     'if [ -f "$HOME/.bash_login" ]; then . "$HOME/.bash_login"; '
                     'elif [ -f "$HOME/.profile" ]; then . "$HOME/.profile"; fi\n',
    ".bash_login": f"# {_NOTE}\n"
                   'if [ -f "$HOME/.profile" ]; then . "$HOME/.profile"; fi\n',
    ".inputrc": f"# {_NOTE}\n$include /etc/inputrc\n",
    ".vimrc": f'" {_NOTE}\n'
              "if filereadable(expand('~/.vim/vimrc')) | source ~/.vim/vimrc"
              " | else | unlet! skip_defaults_vim | source $VIMRUNTIME/defaults.vim | endif\n",
}

# Looking for symlinks inside read-only protected folders (a dotfile manager's
# ~/.config/nvim -> ~/dotfiles/nvim) stops at this depth and entry count.
_LINK_SCAN_DEPTH = 3
_NO_LINK_SCAN = {"~/.cache/"}
_LINK_SCAN_ENTRIES = 2000


class ProtectionError(ValueError):
    """A writable mount the kernel would get cannot be protected."""


# --- entries ---------------------------------------------------------------------

def check_entry(entry: object) -> str:
    """Return the entry if its syntax is valid, else raise ValueError naming it.
    `..` is refused so an entry cannot climb out of a home folder or a mount root."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{entry!r} is empty")
    if "\0" in entry:
        raise ValueError(f"{entry!r} contains a NUL character")
    if ".." in entry.split("/"):
        raise ValueError(f"{entry!r} contains '..'")
    if entry.startswith("~") and entry != "~" and not entry.startswith("~/"):
        raise ValueError(f"{entry!r}: only '~/' (each home folder) is understood, not '~user'")
    if posixpath.normpath(entry) in ("/", "."):
        raise ValueError(f"{entry!r} would cover every folder")
    return entry


def check_entries(entries: Iterable[object], setting: str) -> list[str]:
    out = []
    for entry in entries:
        try:
            out.append(check_entry(entry))
        except ValueError as exc:
            raise ValueError(f"{setting}: {exc}; use ~/path, /absolute/path or a name "
                             f"relative to the folder, like .git/hooks") from None
    return out


def expand(entry: str, homes: Sequence[str], roots: Sequence[str]) -> list[tuple[str, bool]]:
    """Host paths an entry stands for, each with whether it names a folder."""
    is_dir = entry.endswith("/")
    body = entry.rstrip("/")
    if body == "~" or body.startswith("~/"):
        bases, rel = homes, body[2:]
    elif body.startswith("/"):
        return [(posixpath.normpath(body), is_dir)]
    else:
        bases, rel = roots, body
    return [(posixpath.normpath(posixpath.join(b, rel)) if rel else b, is_dir) for b in bases]


def home_dirs(kernel_uid: int | None = None) -> list[str]:
    """The home folders whose dotfiles matter: the server user's ($HOME and the
    password database's) and the kernel uid's, when they exist."""
    cands = [os.path.expanduser("~")]
    for uid in (os.getuid(), kernel_uid):
        if uid is None:
            continue
        try:
            cands.append(pwd.getpwuid(uid).pw_dir)
        except KeyError:
            pass
    out: list[str] = []
    for c in cands:
        if c and os.path.isabs(c) and os.path.isdir(c):
            r = os.path.realpath(c)
            if r != "/" and r not in out:
                out.append(r)
    return out


@dataclass(frozen=True)
class ServerPaths:
    """Absolute entries that come from how this Jupyter server is set up."""
    deny_write: tuple[str, ...] = ()
    deny_read: tuple[str, ...] = ()
    if_present: tuple[str, ...] = ()


def server_paths() -> ServerPaths:
    """Jupyter's config/data/runtime folders and search paths as jupyter_core
    reports them for this server (a kernel spec written there would replace
    the sandboxed kernel); the server's Python environment, PATH and
    PYTHONPATH (a .pth file or an executable planted there runs outside)."""
    from jupyter_core import paths as jp

    runtime = jp.jupyter_runtime_dir()
    write = [jp.jupyter_config_dir(), jp.jupyter_data_dir(), runtime,
             *jp.jupyter_config_path(), *jp.jupyter_path()]
    for var in ("IPYTHONDIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            write.append(os.environ[var])
    present = [sys.prefix, sys.exec_prefix, sys.base_prefix,
               os.path.dirname(os.path.abspath(__file__))]
    try:
        present += site.getsitepackages()
    except AttributeError:  # some virtualenvs
        pass
    present.append(site.getusersitepackages() or "")
    for var in ("PATH", "PYTHONPATH"):
        present += os.environ.get(var, "").split(os.pathsep)

    def folders(paths):
        return tuple(dict.fromkeys(posixpath.normpath(p) + "/" for p in paths
                                   if p and os.path.isabs(p) and posixpath.normpath(p) != "/"))
    # The notary's secret and signature database: notebook trust is the user's
    # consent to a notebook's egress (awf_kernel.trust), never the kernel's.
    data = jp.jupyter_data_dir()
    notary = tuple(posixpath.normpath(os.path.join(data, name)) for name in ("notebook_secret", "nbsignatures.db"))
    return ServerPaths(deny_write=folders(write), deny_read=folders([runtime]) + notary, if_present=folders(present))


# --- planning ------------------------------------------------------------------------

@dataclass
class _Rule:
    entry: str          # as written, for messages
    path: str           # host path, lexical
    is_dir: bool        # when missing: hold with a folder (else a file)
    hide: bool          # deny_read: the kernel sees an empty folder/file
    hold: bool          # create a placeholder when missing
    strict: bool        # covering a whole writable mount, or a replaceable symlink, is an error


@dataclass
class _Item:
    path: str           # host realpath to protect
    kind: str           # "hide" | "ro" | "hold"
    is_dir: bool
    rule: _Rule


@dataclass(frozen=True)
class Placeholder:
    """A file or folder made on the host to hold a missing protected path.
    Removed at cleanup only if it is still this very inode, untouched."""
    path: str
    is_dir: bool
    dev: int
    ino: int
    mtime_ns: int
    size: int


@dataclass
class Protection:
    mounts: list[Mount] = field(default_factory=list)
    placeholders: list[Placeholder] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _under(path: str, root: str) -> bool:
    """path is root or inside it (both normalised absolute paths)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolve(path: str, links: list[str], depth: int = 0) -> str:
    """realpath(), recording where each symlink followed on the way lives. The
    part after the first missing component stays as written."""
    if depth > 40:
        return posixpath.normpath(path)
    parts = [p for p in path.split("/") if p and p != "."]
    cur = "/"
    for i, part in enumerate(parts):
        if part == "..":
            cur = posixpath.dirname(cur)
            continue
        nxt = posixpath.join(cur, part)
        try:
            st = os.lstat(nxt)
        except OSError:
            return posixpath.normpath(posixpath.join(cur, *parts[i:]))
        if stat.S_ISLNK(st.st_mode):
            links.append(nxt)
            target = os.readlink(nxt)
            cur = _resolve(posixpath.join(cur, target), links, depth + 1)
        else:
            cur = nxt
    return cur


def _lstat(path: str):
    try:
        return os.lstat(path)
    except OSError:
        return None


def _items_for(rule: _Rule, real: str) -> list[_Item]:
    st = _lstat(real)
    if st is not None:
        kind = "hide" if rule.hide else "ro"
        return [_Item(real, kind, stat.S_ISDIR(st.st_mode), rule)]
    if not rule.hold:
        return []
    # Missing: hold the first missing component under the nearest existing
    # folder (a missing intermediate folder is held as a whole, so nothing can
    # be created below it); a file in the way is itself protected (a `.git`
    # file pointing at the repository must not be rewritten).
    parent = real
    while True:
        parent = posixpath.dirname(parent)
        pst = _lstat(parent)
        if pst is not None:
            break
    first = posixpath.join(parent, real[len(parent):].lstrip("/").split("/")[0])
    if not stat.S_ISDIR(pst.st_mode):
        return [_Item(parent, "ro", False, rule)]
    return [_Item(first, "hold", rule.is_dir or first != real, rule)]


_KIND_ORDER = {"hide": 0, "ro": 1, "hold": 2}


def _prune(items: list[_Item]) -> list[_Item]:
    """Drop what an ancestor already covers: nothing below a hidden path;
    below a read-only path only what must also be hidden."""
    kept: dict[str, _Item] = {}
    for it in sorted(items, key=lambda i: (i.path, _KIND_ORDER[i.kind])):
        covered = False
        for anc in _ancestors_and_self(it.path):
            k = kept.get(anc)
            if k is None:
                continue
            if k.kind == "hide" or it.kind != "hide" or anc == it.path:
                covered = True
                break
        if not covered:
            kept[it.path] = it
    return list(kept.values())


def _ancestors_and_self(path: str) -> list[str]:
    out = [path]
    while path != "/":
        path = posixpath.dirname(path)
        out.append(path)
    return out


def _scan_links(folder: str) -> list[str]:
    """Symlinks inside a folder, breadth first, bounded."""
    found, seen, queue = [], 0, [(folder, 0)]
    while queue and seen < _LINK_SCAN_ENTRIES:
        d, depth = queue.pop(0)
        try:
            with os.scandir(d) as it:
                for e in it:
                    seen += 1
                    if e.is_symlink():
                        found.append(e.path)
                    elif depth + 1 < _LINK_SCAN_DEPTH and e.is_dir(follow_symlinks=False):
                        queue.append((e.path, depth + 1))
                    if seen >= _LINK_SCAN_ENTRIES:
                        break
        except OSError:
            continue
    return found


def plan(mounts: Sequence[Mount], *, homes: Sequence[str],
         deny_write: Sequence[str] = (), deny_read: Sequence[str] = (),
         server: ServerPaths | None = None) -> tuple[list[tuple[Mount, _Item | None]], list[_Item], list[str]]:
    """Decide, without changing anything: [(mount, item or None for a
    rename-guard)], the items needing a placeholder, warnings.
    Raises ProtectionError when a writable mount cannot be protected."""
    server = server_paths() if server is None else server
    writable = [Mount(os.path.realpath(m.source), posixpath.normpath(m.target), False)
                for m in mounts if not m.read_only]
    roots = list(dict.fromkeys(m.source for m in writable))
    folder_roots = [r for r in roots if os.path.isdir(r)]  # a file mount has no `.git/hooks`
    homes = [os.path.realpath(h) for h in homes]
    warnings: list[str] = []

    rules: list[_Rule] = []

    def add(entries, *, hide, hold, strict):
        for entry in entries:
            for path, is_dir in expand(entry, homes, folder_roots):
                rules.append(_Rule(entry, path, is_dir, hide, hold, strict))

    add([*DENY_READ, *server.deny_read, *deny_read], hide=True, hold=False, strict=True)
    add([*DENY_WRITE, *server.deny_write, *deny_write], hide=False, hold=True, strict=True)
    add([*DENY_WRITE_IF_PRESENT, *server.if_present], hide=False, hold=False, strict=False)

    resolved: list[tuple[_Rule, list[str]]] = []
    items: list[_Item] = []

    def take(rule: _Rule) -> None:
        links: list[str] = []
        real = _resolve(rule.path, links)
        resolved.append((rule, links))
        for it in _items_for(rule, real):
            if any(_under(root, it.path) for root in roots):
                msg = (f"the writable folder {_root_of(it.path, roots)} is inside {it.path} "
                       f"({rule.entry}), which a kernel may not "
                       f"{'read' if it.kind == 'hide' else 'change'}")
                if rule.strict:
                    raise ProtectionError(msg)
                warnings.append(msg + "; left as it is")
            elif any(_under(it.path, root) for root in roots):
                items.append(it)

    for rule in rules:
        take(rule)

    # Symlinks inside read-only protected folders (a dotfile manager's
    # ~/.config/nvim -> ~/dotfiles/nvim) lead somewhere the kernel may be able
    # to write: protect where they point too. Not in caches and installations,
    # whose links are not configuration (and may point into a project).
    scanned: set[str] = set()
    for _ in range(4):
        new = False
        for it in _prune(items):
            if (it.kind != "ro" or not it.is_dir or it.path in scanned or not it.rule.hold
                    or it.rule.entry in _NO_LINK_SCAN):
                continue
            scanned.add(it.path)
            for link in _scan_links(it.path):
                new = True
                take(_Rule(f"{link} (symlink)", link, False, hide=False, hold=True, strict=False))
        if not new:
            break
    kept = _prune(items)

    # A symlink on the way to a protected path, in a place the kernel can
    # write, could be replaced by one of the kernel's own: refuse.
    for rule, links in resolved:
        for link in links:
            if any(_under(link, r) for r in roots) and not any(_under(link, k.path) for k in kept):
                msg = (f"{link} is a symlink the kernel could replace with a file of its own "
                       f"(it leads to {rule.entry}, which a kernel may not change)")
                if rule.strict:
                    raise ProtectionError(msg)
                if msg + "; not protected" not in warnings:
                    warnings.append(msg + "; not protected")

    # Map each protected host path through every writable mount that shows it.
    out: dict[str, tuple[Mount, _Item | None]] = {}
    guards: dict[str, tuple[Mount, None]] = {}
    for it in sorted(kept, key=lambda i: i.path):
        for m in writable:
            if not _under(it.path, m.source) or it.path == m.source:
                continue
            target = posixpath.join(m.target, it.path[len(m.source):].lstrip("/"))
            if _shadowed(target, m, mounts):
                continue
            out[target] = (Mount(it.path, target, True), it)
            # Each folder between the mount's root and the protected path
            # becomes a mountpoint, so it cannot be renamed away.
            parent = posixpath.dirname(target)
            while parent != m.target:
                host = posixpath.join(m.source, parent[len(m.target):].lstrip("/"))
                if not any(_under(host, k.path) for k in kept):
                    guards[parent] = (Mount(host, parent, False), None)
                parent = posixpath.dirname(parent)
    planned = [*out.values(), *(g for t, g in guards.items() if t not in out)]
    planned.sort(key=lambda p: (p[0].target.count("/"), p[0].target))
    holds = [it for it in kept if it.kind == "hold"]
    return planned, holds, warnings


def _root_of(path: str, roots: Sequence[str]) -> str:
    return next(r for r in roots if _under(r, path))


def _shadowed(target: str, mount: Mount, mounts: Sequence[Mount]) -> bool:
    """Another mount, deeper than `mount`, decides what the kernel sees at target."""
    return any(o.target != mount.target and _under(posixpath.normpath(o.target), mount.target)
               and _under(target, posixpath.normpath(o.target)) for o in mounts)


# --- doing -------------------------------------------------------------------------

def protect(mounts: Sequence[Mount], *, homes: Sequence[str], scratch_dir: str,
            deny_write: Sequence[str] = (), deny_read: Sequence[str] = (),
            server: ServerPaths | None = None) -> Protection:
    """The mounts to layer over `mounts` (their writable ones) and the
    placeholders made on the host for them. `scratch_dir` is a per-kernel
    folder the caller removes (after `remove_placeholders`): it holds the empty
    folder and file mounted over hidden paths, and the list of this kernel's
    placeholders. A placeholder another running kernel made in the same folder
    is adopted (listed here too), so whichever kernel stops last removes it.
    On any error, placeholders made so far are removed."""
    with _registry_lock(scratch_dir):
        others = _others_placeholders(scratch_dir, live_only=False)
        planned, holds, warnings = plan(mounts, homes=homes, deny_write=deny_write,
                                        deny_read=deny_read, server=server)
        made: list[Placeholder] = []
        failed: set[str] = set()
        try:
            for hold in holds:
                try:
                    made.append(make_placeholder(hold.path, hold.is_dir))
                except FileExistsError:
                    pass  # appeared meanwhile (the host user): protected as it is
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise ProtectionError(f"cannot hold {hold.path} ({hold.rule.entry}) with a placeholder: "
                                              f"{exc}") from None
                    failed.add(hold.path)
                    warnings.append(f"cannot create a placeholder at {hold.path} ({exc.strerror}); a kernel "
                                    f"running as another user than this server could create it")
            result = Protection(placeholders=list(made), warnings=warnings)
            empty_dir = os.path.join(scratch_dir, "empty-folder")
            empty_file = os.path.join(scratch_dir, "empty-file")
            for mount, it in planned:
                if it is not None and it.path in failed:
                    continue
                if it is not None and it.kind in ("ro", "hide"):
                    st = _lstat(it.path)
                    adopted = st and others.get((it.path, st.st_dev, st.st_ino, st.st_mtime_ns))
                    if adopted:
                        result.placeholders.append(adopted)
                if it is not None and it.kind == "hide":
                    if it.is_dir:
                        if not os.path.isdir(empty_dir):
                            os.mkdir(empty_dir, 0o555)
                        mount = Mount(empty_dir, mount.target, True)
                    else:
                        if not os.path.isfile(empty_file):
                            os.close(os.open(empty_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
                        mount = Mount(empty_file, mount.target, True)
                result.mounts.append(mount)
            with open(os.path.join(scratch_dir, MANIFEST), "w") as f:
                json.dump({"server": [socket.gethostname(), os.getpid()],
                           "placeholders": [asdict(p) for p in result.placeholders]}, f, indent=1)
            return result
        except BaseException:
            _remove_untouched(made)  # not listed anywhere yet: nobody else uses them
            raise


MANIFEST = "placeholders.json"


@contextlib.contextmanager
def _registry_lock(scratch_dir: str):
    """Serialises placing and removing placeholders among this user's kernels
    (kernels of several servers share the temp folder the scratch folders live in)."""
    path = os.path.join(os.path.dirname(os.path.abspath(scratch_dir)), f"awf-kernel-placeholders-{os.getuid()}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        fd = None  # someone else's file in a shared temp folder: go on without (a narrow race)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _key(p: Placeholder) -> tuple[str, int, int, int]:
    return (p.path, p.dev, p.ino, p.mtime_ns)


def _others_placeholders(scratch_dir: str, live_only: bool = True) -> dict[tuple[str, int, int, int], Placeholder]:
    """Placeholders listed by other kernels' scratch folders (this user's own
    folders), by (path, device, inode, mtime) so that a reused inode number
    alone does not match. A starting kernel adopts them all, also those a
    server killed hard left behind; only lists of running servers keep a
    stopping kernel from removing one."""
    own = os.path.realpath(scratch_dir)
    base = os.path.dirname(own)
    out: dict[tuple[str, int, int, int], Placeholder] = {}
    try:
        names = [n for n in os.listdir(base) if n.startswith("awf-kernel-")]
    except OSError:
        return out
    for name in names:
        d = os.path.join(base, name)
        st = _lstat(d)
        if d == own or st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        try:
            with open(os.path.join(d, MANIFEST)) as f:
                doc = json.load(f)
            host, pid = doc["server"]
            records = [Placeholder(**r) for r in doc["placeholders"]]
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if live_only and host == socket.gethostname() and not _alive(pid):
            continue
        for r in records:
            out[_key(r)] = r
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, TypeError):
        return True
    return True


def make_placeholder(path: str, is_dir: bool) -> Placeholder:
    """Create an empty folder or file (or one of PLACEHOLDER_TEXT) owned like
    its parent folder. Never follows a symlink, never replaces anything."""
    parent = os.path.dirname(path)
    pst = os.stat(parent)
    if is_dir:
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        text = PLACEHOLDER_TEXT.get(os.path.basename(path))
        if text:
            os.write(fd, text.encode())
    try:
        if os.geteuid() == 0 and (pst.st_uid, pst.st_gid) != (0, 0):
            os.fchown(fd, pst.st_uid, pst.st_gid)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return Placeholder(path, is_dir, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def remove_placeholders(placeholders: Iterable[Placeholder], scratch_dir: str | None = None) -> list[str]:
    """Remove each placeholder still untouched (same inode, size and mtime, a
    folder still empty) and not used by another running kernel (listed in its
    scratch folder); drop this kernel's list. Return the paths left in place
    because they changed on the host."""
    if scratch_dir is None:
        return _remove_untouched(placeholders)
    with _registry_lock(scratch_dir):
        others = _others_placeholders(scratch_dir)
        try:
            os.unlink(os.path.join(scratch_dir, MANIFEST))
        except OSError:
            pass
        return _remove_untouched(p for p in placeholders if _key(p) not in others)


def _remove_untouched(placeholders: Iterable[Placeholder]) -> list[str]:
    kept = []
    for p in sorted(placeholders, key=lambda p: p.path, reverse=True):
        st = _lstat(p.path)
        if st is None:
            continue
        same = (st.st_dev, st.st_ino, st.st_mtime_ns) == (p.dev, p.ino, p.mtime_ns)
        try:
            if same and p.is_dir and stat.S_ISDIR(st.st_mode) and not os.listdir(p.path):
                os.rmdir(p.path)
                continue
            if same and not p.is_dir and stat.S_ISREG(st.st_mode) and st.st_size == p.size:
                os.unlink(p.path)
                continue
        except OSError:
            pass
        kept.append(p.path)
    return kept


def set_holder(scratch_dir: str, host: str, pid: int) -> bool:
    """Make the process `pid` on `host` the one whose life keeps this scratch
    folder's placeholders in use by other kernels (by default the process that
    called `protect`). The broker places placeholders from a short-lived
    helper and hands them to itself, then again after it restarts. Returns
    False when the folder lists nothing."""
    with _registry_lock(scratch_dir):
        path = os.path.join(scratch_dir, MANIFEST)
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return False
        if not isinstance(doc, dict):
            return False
        doc["server"] = [host, pid]
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
        return True


def release_scratch(scratch_dir: str) -> list[str]:
    """For `gc`: a dead kernel's scratch folder still lists the placeholders it
    made on the host; remove those that are untouched and not used by a
    running kernel. Returns the paths removed."""
    try:
        with open(os.path.join(scratch_dir, MANIFEST)) as f:
            records = [Placeholder(**r) for r in json.load(f)["placeholders"]]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    kept = set(remove_placeholders(records, scratch_dir))
    return [r.path for r in records if r.path not in kept and not os.path.lexists(r.path)]


def host_path(target: str, mounts: Sequence[Mount]) -> str | None:
    """Where a path the kernel sees lives on the host, through the mount that
    holds it (the deepest one)."""
    best = None
    for m in mounts:
        if target == m.target or target.startswith(m.target.rstrip("/") + "/"):
            if best is None or len(m.target) > len(best.target):
                best = m
    return None if best is None else best.source + target[len(best.target):]
