"""Configuration of the pod's filtering resolver (containers/proxy/resolver.py)."""

from __future__ import annotations

import json

from ..policy import DomainRule, Policy
from . import ports


def _by_scope(rules: tuple[DomainRule, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"exact": [], "subdomains": [], "both": []}
    for rule in rules:
        out[rule.scope].append(rule.host)
    return out


def render_resolver_config(policy: Policy, *, kernel_id: str, upstreams: list[str],
                           notebook: str | None = None) -> str:
    """JSON for the resolver. Empty `upstreams` means: use the resolvers Docker
    gave the proxy container (the operator's normal DNS)."""
    config = {
        "kernel_id": kernel_id,
        "notebook": notebook,
        "listen": "127.0.0.1",
        "port": ports.RESOLVER,
        "upstreams": list(upstreams),
        "allow": _by_scope(policy.allow),
        "block": _by_scope(policy.block),
        "allow_all": policy.mode == "record" and getattr(policy, "allow_all", False),
        "log": "/var/log/awf/dns.jsonl",
    }
    return json.dumps(config, indent=1, sort_keys=True)
