"""The sandboxed kernels a notebook has, and what each one enforces.

The server knows a notebook's kernels only through its sessions (path ->
kernel id) and a kernel's sandbox only through its provisioner: this module
is the one place that walks from one to the other, and the one place that
talks to `AWFProvisioner.policy_view` / `update_policy`, so the handlers and
the post-save hook never depend on the provisioner's internals.
"""

from __future__ import annotations

import inspect
import os
import posixpath
from typing import Any

from ..errors import PolicyError
from ..policy import PolicyRequest
from ..provisioner import AWFProvisioner
from .lists import Bounds, expand


def api_path(path: Any) -> str | None:
    """A contents-API path in canonical form ('a/b.ipynb'), or None when it
    is not one (absolute after stripping, '..' segments, not a string)."""
    if not isinstance(path, str) or not path or "\x00" in path:
        return None
    norm = posixpath.normpath(path.strip("/"))
    if norm in (".", "") or norm.startswith("../") or norm == "..":
        return None
    return norm


async def notebook_kernels(session_manager, kernel_manager, path: str) -> list[tuple[str, AWFProvisioner]]:
    """(kernel id, provisioner) of every running sandboxed kernel whose
    session is this notebook, in session order."""
    out = []
    for session in await session_manager.list_sessions():
        if api_path(session.get("path")) != path or not session.get("kernel"):
            continue
        kernel_id = session["kernel"]["id"]
        provisioner = sandbox_of(kernel_manager, kernel_id)
        if provisioner is not None:
            out.append((kernel_id, provisioner))
    return out


def sandbox_of(kernel_manager, kernel_id: str) -> AWFProvisioner | None:
    """The kernel's AWFProvisioner, or None (not ours, not running)."""
    try:
        km = kernel_manager.get_kernel(kernel_id)
    except KeyError:
        return None
    provisioner = getattr(km, "provisioner", None)
    return provisioner if isinstance(provisioner, AWFProvisioner) else None


def view(provisioner: AWFProvisioner) -> dict:
    """The kernel's policy in the one shape the browser reads:

        {mode, allow_all, effective: {allow_domains, block_domains},
         admin: {allow_domains, block_domains, domain_ceiling (None: no ceiling)},
         request, pending: {allow_domains, block_domains, *_expanded, source} | None,
         require_trust}

    Lists are canonical rule strings; the request's as written (presets
    unexpanded) plus their expansion."""
    raw = _raw_view(provisioner)
    hub = bool(raw.get("hub_mode", getattr(provisioner, "broker", "")))
    if hub:  # the settings on this side are ignored: the broker's config decides
        raw = {**raw, "admin": {}, "ceiling": None, "effective": {}}
    admin = raw.get("admin") or {}
    ceiling = admin.get("domain_ceiling", raw.get("ceiling"))
    effective = raw.get("effective") or raw.get("policy") or {}
    mode = raw.get("mode") or effective.get("mode") or "enforce"
    return {
        "mode": mode,
        "allow_all": bool(effective.get("allow_all")),
        "effective": {"allow_domains": list(effective.get("allow_domains") or ()),
                      "block_domains": list(effective.get("block_domains") or ())},
        "admin": {"allow_domains": expand(list(admin.get("allow_domains") or ())),
                  "block_domains": expand(list(admin.get("block_domains") or ())),
                  "domain_ceiling": None if ceiling is None else expand(list(ceiling)),
                  "allow_record_mode": bool(admin.get("allow_record_mode",
                                                      getattr(provisioner, "allow_record_mode", True)))},
        "request": _request(raw.get("request")),
        "pending": _request(raw.get("pending") or raw.get("pending_request")),
        "require_trust": bool(raw.get("require_trust", getattr(provisioner, "require_trust", False))),
        "hub": hub,
        "notebook": raw.get("notebook"),  # the file the kernel's launch read its request from
    }


def _raw_view(provisioner: AWFProvisioner) -> dict:
    policy_view = getattr(provisioner, "policy_view", None)
    if callable(policy_view):
        raw = policy_view()
        if isinstance(raw, dict):
            return raw
    # Before policy_view existed: what the start decided (LaunchPlan) and the settings.
    plan = getattr(provisioner, "plan", None)
    policy = plan.policy if plan is not None else None
    return {
        "mode": policy.mode if policy else "enforce",
        "effective": {**policy.to_json(), "allow_all": policy.allow_all} if policy else {},
        "admin": {"allow_domains": list(provisioner.allow_domains), "block_domains": list(provisioner.block_domains),
                  "domain_ceiling": None if provisioner.domain_ceiling is None else list(provisioner.domain_ceiling)},
        "request": plan.request.written() if plan is not None and plan.request is not None else None,
    }


def _request(raw: Any) -> dict | None:
    if isinstance(raw, PolicyRequest):
        raw = raw.written()
    if not isinstance(raw, dict):
        return None
    allow, block = list(raw.get("allow_domains") or ()), list(raw.get("block_domains") or ())
    out = {"allow_domains": allow, "block_domains": block, "allow_expanded": expand(allow),
           "block_expanded": expand(block), "source": str(raw.get("source") or "")}
    if raw.get("mode"):
        out["mode"] = raw["mode"]
    return out


def bounds(provisioner: AWFProvisioner) -> Bounds | None:
    """The kernel's admin bounds, or None when this server does not know them
    (hub mode: the broker's config decides, and checks them at the next start)."""
    v = view(provisioner)
    if v["hub"]:
        return None
    admin = v["admin"]
    try:
        return Bounds.from_lists(admin["allow_domains"], admin["block_domains"], admin["domain_ceiling"],
                                 bool(admin.get("allow_record_mode", True)))
    except PolicyError:
        return None


async def reload(provisioner: AWFProvisioner, request: PolicyRequest | None, source: str, *,
                 os_path: str | None = None, trusted: bool | None = None) -> None:
    """Put the notebook's saved policy in force in the running pod. The
    provisioner re-reads it where the launch did (the notebook file with its
    trust, or the launcher's AWF_POLICY, which wins). A notebook renamed
    since its kernel started is no longer where the launch read it: then
    `request` (read from `os_path`, the file saved) is handed over, if the
    file is trusted. Raises an AWFError (then nothing changed)."""
    reload_policy = getattr(provisioner, "reload_policy", None)
    started_from = view(provisioner).get("notebook")
    moved = bool(started_from and os_path and os.path.realpath(started_from) != os.path.realpath(os_path))
    if moved and getattr(provisioner, "update_policy", None) is not None:
        if getattr(provisioner, "require_trust", False) and not trusted:
            raise PolicyError("this notebook was renamed or moved since its kernel started, and it is not trusted",
                              hint="trust it (the sandbox panel's Confirm), or restart the kernel")
        result = provisioner.update_policy(request, source=source)
    elif reload_policy is not None:
        result = reload_policy(source=source)
    elif getattr(provisioner, "update_policy", None) is not None:
        result = provisioner.update_policy(request, source=source)
    else:
        raise PolicyError("this awf-kernel cannot change a running kernel's policy",
                          hint="restart the kernel to apply the notebook's metadata")
    if inspect.isawaitable(result):
        await result
