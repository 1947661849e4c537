"""Names and labels of every resource a kernel's sandbox creates.

One prefix, one helper: `gc`, `doctor` and the tests find resources by these
labels, never by name, so a renamed container cannot escape collection.
"""

from __future__ import annotations

LABEL_PREFIX = "io.awf-kernel"
MANAGED = f"{LABEL_PREFIX}.managed"
KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
ROLE = f"{LABEL_PREFIX}.role"
SERVER = f"{LABEL_PREFIX}.server"

ROLES = ("proxy", "firewall", "kernel", "ingress")


def labels(kernel_id: str, role: str, server: str = "") -> dict[str, str]:
    """Labels for one resource of one kernel's pod."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    out = {MANAGED: "true", KERNEL_ID: kernel_id, ROLE: role}
    if server:
        out[SERVER] = server
    return out


def short_id(kernel_id: str) -> str:
    """Enough of the kernel id to be unique on one host and readable in `docker ps`."""
    return "".join(c for c in kernel_id.lower() if c.isalnum())[:12] or "nokernel"


def resource_name(kernel_id: str, role: str) -> str:
    """`awf-<short id>-<role>`: readable, unique per kernel, never used to find things."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return f"awf-{short_id(kernel_id)}-{role}"


def kernel_filter(kernel_id: str | None = None) -> dict[str, list[str]]:
    """A docker SDK `filters` value selecting our resources (of one kernel)."""
    wanted = [f"{MANAGED}=true"]
    if kernel_id:
        wanted.append(f"{KERNEL_ID}={kernel_id}")
    return {"label": wanted}
