"""What the browser asks before it changes a notebook's lists: are these
entries valid, and can this host be allowed?

Pure functions over the admin bounds, so the panel and the denial notice
show the same grammar and the same error messages as a kernel start
(awf_kernel.policy), and a host the admin forbids never gets an Allow button.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PolicyError
from ..policy import DomainRule, covers, normalize_host, parse_domain, parse_domains, resolve_policy
from ..policy import PolicyRequest

FIELDS = ("allow_domains", "block_domains")


@dataclass(frozen=True)
class Bounds:
    """The admin side of a kernel's policy, as rules (None ceiling = no ceiling)."""

    allow: tuple[DomainRule, ...] = ()
    block: tuple[DomainRule, ...] = ()
    ceiling: tuple[DomainRule, ...] | None = None
    record_allowed: bool = True

    @classmethod
    def from_lists(cls, allow=(), block=(), ceiling=None, record_allowed: bool = True) -> Bounds:
        return cls(parse_domains(list(allow or ()), "AWFProvisioner.allow_domains"),
                   parse_domains(list(block or ()), "AWFProvisioner.block_domains"),
                   None if ceiling is None else parse_domains(list(ceiling), "AWFProvisioner.domain_ceiling"),
                   record_allowed)


def expand(entries: Any) -> list[str]:
    """The hosts a list stands for (presets expanded); [] for anything unreadable."""
    try:
        return [str(r) for r in parse_domains(entries, "list")]
    except PolicyError:
        return []


def entry_errors(entries: Any, field: str) -> list[dict]:
    """Every bad entry of one list, each with the server's own message and hint."""
    where = f"awf.{field}"
    if entries is None:
        return []
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        try:
            parse_domains(entries, where)
        except PolicyError as exc:
            return [_error(field, None, entries, exc)]
        return []
    errors = []
    for i, entry in enumerate(entries):
        try:
            parse_domains([entry], f"{where}[{i}]") if isinstance(entry, str) and entry.startswith("@") \
                else parse_domain(entry, f"{where}[{i}]")
        except PolicyError as exc:
            errors.append(_error(field, i, entry, exc))
    if not errors:
        try:
            parse_domains(entries, where)  # list-level limits (MAX_ENTRIES)
        except PolicyError as exc:
            errors.append(_error(field, None, None, exc))
    return errors


def _error(field: str, index: int | None, entry: Any, exc: PolicyError) -> dict:
    message = exc.message.replace(f"awf.{field}[{index}][0]", f"awf.{field}[{index}]")
    return {"field": field, "index": index, "entry": entry if isinstance(entry, str) else None,
            "message": message, "hint": exc.hint}


def validate(obj: dict, bounds: Bounds | None) -> dict:
    """{valid, errors, expanded}: the grammar of each entry, then (when the
    kernel's admin bounds are known) the ceiling and record-mode checks a
    kernel start would make."""
    errors = [e for f in FIELDS for e in entry_errors(obj.get(f), f)]
    if not errors and bounds is not None:
        try:
            request = _request(obj)
            resolve_policy(admin_allow=bounds.allow, admin_block=bounds.block, ceiling=bounds.ceiling,
                           request=request, record_allowed=bounds.record_allowed)
        except PolicyError as exc:
            errors.append({"field": "allow_domains", "index": None, "entry": None,
                           "message": exc.message, "hint": exc.hint})
    return {"valid": not errors, "errors": errors,
            "expanded": {f: expand(obj.get(f)) for f in FIELDS}}


def _request(obj: dict) -> PolicyRequest:
    from ..policy import parse_request

    return parse_request({k: v for k, v in obj.items() if v is not None}, "notebook metadata awf")


def can_allow(host: Any, bounds: Bounds | None, request: dict | None, effective: list[str] | None) -> dict:
    """Whether adding `host` to the notebook's allow_domains would let it
    through, and if not, why. `request` is the notebook's awf entry as written,
    `effective` the kernel's allow list now (None: not known)."""
    name = normalize_host(host) if isinstance(host, str) else None
    out: dict[str, Any] = {"host": host if isinstance(host, str) else None, "name": name, "allowable": False}
    if name is None:
        return {**out, "reason": "not a valid host name: no allow_domains entry can allow it"}
    try:
        rule = parse_domain(name, "host")
    except PolicyError as exc:
        return {**out, "reason": exc.message.removeprefix("host: ")}
    bounds = bounds or Bounds()
    for block in bounds.block:
        if block.matches(name):
            return {**out, "reason": f"blocked by the administrator (AWFProvisioner.block_domains: {block})"}
    for entry in (request or {}).get("block_domains") or ():
        for block in _rules(entry):
            if block.matches(name):
                return {**out, "reason": f"in this notebook's block_domains ({entry}): remove it there first"}
    if bounds.ceiling is not None and not any(covers(c, rule) for c in bounds.ceiling):
        return {**out, "reason": "outside the admin's domain_ceiling: ask the administrator to add it to "
                                 "AWFProvisioner.domain_ceiling"}
    for entry in effective or ():
        for allow in _rules(entry):
            if allow.matches(name):
                return {**out, "already": True, "reason": f"allowed now (by {allow})"}
    return {**out, "allowable": True, "reason": ""}


def _rules(entry: Any) -> tuple[DomainRule, ...]:
    try:
        return parse_domains([entry], "entry")
    except PolicyError:
        return ()
