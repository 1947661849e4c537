"""Names and labels of every resource a kernel's sandbox creates.

One prefix, one helper: `gc`, `doctor` and the tests find resources by these
labels, never by name, so a renamed container cannot escape collection.
"""

from __future__ import annotations

import re

LABEL_PREFIX = "io.awf-kernel"
MANAGED = f"{LABEL_PREFIX}.managed"
KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
ROLE = f"{LABEL_PREFIX}.role"
SERVER = f"{LABEL_PREFIX}.server"
# Pods the broker made carry their owner's uid: the broker's table of who may
# act on which kernel is rebuilt from it after a restart (hub mode).
OWNER_UID = f"{LABEL_PREFIX}.owner-uid"
# A warm pool's pods are made before their kernel exists (awf_kernel.sandbox.pool):
# their proxy and networks carry the pool pod's own id as kernel id and POOL;
# the kernel container started in one later carries its kernel id and POD (the
# pool pod's id). Labels cannot change after creation, so POD is the link.
POOL = f"{LABEL_PREFIX}.pool"
POD = f"{LABEL_PREFIX}.pod"
POOL_ID_PREFIX = "pool-"

ROLES = ("proxy", "firewall", "kernel", "ingress", "holder", "link")

MAX_KERNEL_ID = 64
_KERNEL_ID = re.compile(r"[A-Za-z0-9-]{1,%d}" % MAX_KERNEL_ID)  # fullmatch: "$" would admit "\n"


def valid_kernel_id(kernel_id: str) -> str:
    """`kernel_id` unchanged if it is safe to join into a path, a label or a
    name, else ValueError.

    jupyter_client makes kernel ids with uuid4 ("4bfe02e6-..."); any 1-64
    characters of [A-Za-z0-9-] are accepted (also a prefix typed by a user).
    So "/", "..", ".", NUL, whitespace, empty and overlong ids never are.
    """
    if isinstance(kernel_id, str) and _KERNEL_ID.fullmatch(kernel_id):
        return kernel_id
    if not isinstance(kernel_id, str):
        what = f"a {type(kernel_id).__name__}, not a string"
    elif not kernel_id:
        what = "empty"
    elif len(kernel_id) > MAX_KERNEL_ID:
        what = f"{len(kernel_id)} characters long"
    else:
        what = "not made of letters, digits and '-' only"
    shown = repr(kernel_id)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ValueError(f"invalid kernel id {shown}: {what} (a kernel id looks like "
                     f"'4bfe02e6-1c2d-4e5f-8a9b-0c1d2e3f4a5b': 1-{MAX_KERNEL_ID} letters, digits and '-')")


def labels(kernel_id: str, role: str, server: str = "", owner_uid: int | None = None,
           pod: str | None = None) -> dict[str, str]:
    """Labels for one resource of one kernel's pod (`owner_uid`: the broker's
    pods; `pod`: the pool pod a kernel container runs in). A kernel id that
    starts with `pool-` is a pool pod's own."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    out = {MANAGED: "true", KERNEL_ID: kernel_id, ROLE: role}
    if server:
        out[SERVER] = server
    if owner_uid is not None:
        out[OWNER_UID] = owner_label(owner_uid)
    if kernel_id.startswith(POOL_ID_PREFIX):
        out[POOL] = "true"
    if pod:
        out[POD] = pod
    return out


def owner_label(uid: int) -> str:
    """The owner label's value: the uid in decimal, nothing else."""
    if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
        raise ValueError(f"invalid owner uid {uid!r}")
    return str(uid)


def owner_from_label(value: object) -> int | None:
    """The owner uid a label holds, or None when it is not a plain decimal uid
    (a pod nobody may act on but root)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return int(value)
    return None


def short_id(kernel_id: str) -> str:
    """Enough of the kernel id to be unique on one host and readable in `docker ps`."""
    return "".join(c for c in kernel_id.lower() if c.isalnum())[:12] or "nokernel"


def resource_name(kernel_id: str, role: str) -> str:
    """`awf-<short id>-<role>`: readable, unique per kernel, never used to find things."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return f"awf-{short_id(kernel_id)}-{role}"


def kernel_filter(kernel_id: str | None = None, *, owned: bool = False,
                  server: str | None = None) -> dict[str, list[str]]:
    """A docker SDK `filters` value selecting our resources (of one kernel;
    `owned`: only the broker's, which carry an owner; `server`: only those
    one server or broker made)."""
    wanted = [f"{MANAGED}=true"]
    if kernel_id:
        wanted.append(f"{KERNEL_ID}={kernel_id}")
    if owned:
        wanted.append(OWNER_UID)
    if server:
        wanted.append(f"{SERVER}={server}")
    return {"label": wanted}
