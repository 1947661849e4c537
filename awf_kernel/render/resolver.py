"""Configuration of the pod's filtering resolver (containers/proxy/resolver.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..addresses import NEVER_V4, NON_GLOBAL_V4, parse_private_destinations
from ..policy import DomainRule, Policy
from . import ports


def _by_scope(rules: tuple[DomainRule, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"exact": [], "subdomains": [], "both": []}
    for rule in rules:
        out[rule.scope].append(rule.host)
    return out


def render_resolver_config(policy: Policy, *, kernel_id: str, upstreams: list[str],
                           notebook: str | None = None, allowed_private: Iterable[str] = ()) -> str:
    """JSON for the resolver. Empty `upstreams` means: use the resolvers Docker
    gave the proxy container (the operator's normal DNS).

    The resolver drops A records inside `non_global` (the one list of
    non-global networks, awf_kernel.addresses) unless they fall in
    `allowed_private` (the admin's opt-in, validated here again), and those in
    `never` whatever is allowed."""
    config = {
        "kernel_id": kernel_id,
        "notebook": notebook,
        "listen": "127.0.0.1",
        "port": ports.RESOLVER_LISTEN,
        "upstreams": list(upstreams),
        "allow": _by_scope(policy.allow),
        "block": _by_scope(policy.block),
        "allow_all": policy.mode == "record" and getattr(policy, "allow_all", False),
        "allowed_private": [str(net) for net in parse_private_destinations(allowed_private)],
        "non_global": list(NON_GLOBAL_V4),
        "never": list(NEVER_V4),
        "log": "/var/log/awf/dns.jsonl",
    }
    return json.dumps(config, indent=1, sort_keys=True)
