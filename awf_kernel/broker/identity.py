"""Who is asking: the operating system says, never the request.

The broker's socket is open to every local user; each connection's peer
credentials (SO_PEERCRED: the uid, gid and pid of the process that connected,
recorded by the kernel at connect time) are the caller's identity. A kernel
runs as that uid with its primary gid from the password database.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from ..render import ports

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int


@dataclass(frozen=True)
class User:
    """A caller who may own kernels, from the password database."""
    uid: int
    gid: int                   # primary gid (passwd), never the caller's current one
    name: str
    home: str
    groups: tuple[str, ...]    # names of every group the user is in (for overrides)
    gids: tuple[int, ...]      # and their ids (supplementary groups of helper processes)


class NotAllowed(Exception):
    """This caller may not have kernels; the message says why."""


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(uid=uid, gid=gid, pid=pid)


def user_for(uid: int, min_uid: int) -> User:
    """The user a kernel may be started for, or NotAllowed: root, system
    accounts (below `min_uid`), the proxy's uid and unknown uids never."""
    if uid == 0:
        raise NotAllowed("root never gets a kernel; connect as the user the kernel is for")
    if uid == ports.PROXY_UID or uid < min_uid:
        raise NotAllowed(f"uid {uid} is a system account (below min_uid {min_uid}); it gets no kernel")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise NotAllowed(f"uid {uid} is not in the password database") from None
    if entry.pw_gid == 0:
        raise NotAllowed(f"uid {uid}'s primary group is root's; it gets no kernel")
    try:
        gids = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != 0)
    except OSError:
        gids = (entry.pw_gid,)
    names = []
    for g in gids:
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return User(uid=uid, gid=entry.pw_gid, name=entry.pw_name, home=entry.pw_dir,
                groups=tuple(names), gids=gids)
