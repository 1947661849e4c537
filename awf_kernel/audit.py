"""A kernel's egress audit trail: reading, normalizing, summarizing.

Each kernel's folder under `AWFProvisioner.audit_dir` holds what its pod
wrote: `policy.json` (the effective policy, written by the provisioner at
start), `dns.jsonl` (the resolver) and `access.jsonl` (Squid), plus rotated
copies (`.1`... / `.0`...). Records come out in one shape:

    {time, kernel_id, notebook, kind: dns|http|https, host, port, method,
     sni, decision: allowed|denied, reason, rule, status, bytes}

The folder stays after the kernel ends; `awf-kernel logs` reads it.
"""

from __future__ import annotations

import json
import pathlib
import urllib.parse
from collections import Counter
from collections.abc import Iterator

from .policy import Policy, is_ip_literal, parse_domains

POLICY_FILE = "policy.json"
PORT_OF_SQUID_PORT = {"3129": 80, "3130": 443}


def _rotated(folder: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Oldest first: Squid's name.N (0 newest) and the resolver's name.N (1 newest)."""
    older = sorted(folder.glob(name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [p for p in older if p.suffix[1:].isdigit()] + ([folder / name] if (folder / name).exists() else [])


def _lines(folder: pathlib.Path, name: str) -> Iterator[dict]:
    for path in _rotated(folder, name):
        for line in path.read_text(errors="replace").splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue


def load_policy(folder: pathlib.Path) -> dict:
    try:
        return json.loads((folder / POLICY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _policy_of(meta: dict) -> Policy | None:
    """The effective policy recorded at kernel start (canonical entries)."""
    eff = meta.get("policy")
    if not eff:
        return None
    return Policy(allow=parse_domains(eff.get("allow_domains", []), "policy.json allow_domains"),
                  block=parse_domains(eff.get("block_domains", []), "policy.json block_domains"),
                  mode=eff.get("mode", "enforce"), allow_all=bool(eff.get("allow_all")))


def _unq(value):
    if value in (None, "", "-"):
        return None
    return urllib.parse.unquote(str(value))


def _int(value):
    return int(value) if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()) else None


def normalize_proxy(raw: dict, meta: dict, policy: Policy | None) -> dict | None:
    host, sni, url = _unq(raw.get("host")), _unq(raw.get("sni")), _unq(raw.get("url")) or ""
    if not host and not sni:
        return None
    method = _unq(raw.get("method")) or "-"
    squid_status, status, bump = raw.get("squid_status", ""), raw.get("status", ""), _unq(raw.get("bump"))
    port = PORT_OF_SQUID_PORT.get(str(raw.get("squid_port")))
    if port is None:
        if method == "CONNECT" and ":" in url:
            port = _int(url.rsplit(":", 1)[1])
        else:
            port = 443 if url.startswith("https:") else 80
    name = sni if sni and (not host or is_ip_literal(host)) else host
    denied = "DENIED" in squid_status or bump == "terminate" or status == "409"
    if not denied and method == "CONNECT" and bump == "splice" and status in ("0", "-"):
        return None  # the intercept port's first step; the spliced tunnel has its own line
    rec = {
        "time": float(raw.get("time", 0)), "kernel_id": meta.get("kernel_id"), "notebook": meta.get("notebook"),
        "kind": "https" if (port == 443 or sni) else "http", "host": name, "port": port, "method": method,
        "sni": sni, "decision": "denied" if denied else "allowed", "status": _int(status),
        "bytes": _int(raw.get("bytes")) or 0,
    }
    return explain(rec, policy, host_mismatch=status == "409")


def normalize_dns(raw: dict, meta: dict, policy: Policy | None) -> dict:
    rec = {
        "time": float(raw.get("time", 0)), "kernel_id": raw.get("kernel_id") or meta.get("kernel_id"),
        "notebook": meta.get("notebook"), "kind": "dns", "host": raw.get("host"), "port": 53,
        "method": f"DNS {raw.get('qtype')}", "sni": None, "decision": raw.get("decision"),
        "status": None, "bytes": 0,
    }
    return explain(rec, policy)


def explain(rec: dict, policy: Policy | None, host_mismatch: bool = False) -> dict:
    host = rec.get("host") or ""
    decision = policy.decide(host) if policy else None
    if host_mismatch:
        rec["reason"], rec["rule"] = "host-mismatch", None
    elif decision is None:
        rec["reason"], rec["rule"] = ("allowed" if rec["decision"] == "allowed" else "not-allowed"), None
    elif rec["decision"] == "denied" and decision.allowed:
        rec["reason"], rec["rule"] = "refused-by-proxy", None  # e.g. a port other than 80/443
    else:
        rec["reason"] = decision.reason
        rec["rule"] = str(decision.rule) if decision.rule else None
    return rec


def read_kernel(folder: pathlib.Path) -> list[dict]:
    meta = load_policy(folder)
    meta.setdefault("kernel_id", folder.name)
    policy = _policy_of(meta)
    out = [normalize_dns(r, meta, policy) for r in _lines(folder, "dns.jsonl")]
    out += [r for r in (normalize_proxy(r, meta, policy) for r in _lines(folder, "access.jsonl")) if r]
    out.sort(key=lambda r: r["time"])
    return out


def kernels(audit_dir: str) -> list[pathlib.Path]:
    base = pathlib.Path(audit_dir)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def find_kernel(audit_dir: str, kernel_id: str | None) -> pathlib.Path | None:
    folders = kernels(audit_dir)
    if kernel_id is None:
        return folders[-1] if folders else None
    matches = [f for f in folders if f.name.startswith(kernel_id)]
    return matches[-1] if matches else None


def records(audit_dir: str, kernel_id: str | None = None) -> list[dict]:
    folder = find_kernel(audit_dir, kernel_id)
    return read_kernel(folder) if folder else []


def display_host(rec: dict) -> str:
    return rec.get("host") or rec.get("sni") or "?"


def format_record(rec: dict) -> str:
    import time as _time

    when = _time.strftime("%H:%M:%S", _time.localtime(rec.get("time", 0)))
    port = f":{rec['port']}" if rec.get("port") and rec.get("kind") != "dns" else ""
    why = f" ({rec['reason']}{', rule ' + rec['rule'] if rec.get('rule') else ''})"
    return (f"{when} {rec.get('decision', '?'):7} {rec.get('kind', ''):5} {rec.get('method', '')} "
            f"{display_host(rec)}{port}{why}")


def summary(recs: list[dict]) -> dict:
    """Per-host counts and the allow_domains a notebook would need."""
    allowed = Counter(display_host(r) for r in recs if r["decision"] == "allowed")
    denied = Counter(display_host(r) for r in recs if r["decision"] == "denied")
    needed = sorted(h for h in set(allowed) | set(denied) if h != "?" and not is_ip_literal(h))
    return {"allowed": dict(allowed), "denied": dict(denied), "allow_domains": needed}


def format_summary(s: dict) -> str:
    lines = ["host                                     allowed  denied"]
    for host in sorted(set(s["allowed"]) | set(s["denied"])):
        lines.append(f"{host:40} {s['allowed'].get(host, 0):7} {s['denied'].get(host, 0):7}")
    lines.append("")
    lines.append("paste into the notebook's metadata to allow every host seen:")
    lines.append(json.dumps({"awf": {"allow_domains": s["allow_domains"]}}, indent=1))
    return "\n".join(lines)
