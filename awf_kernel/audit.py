"""A kernel's egress audit trail: reading, normalizing, summarizing.

Each kernel's folder under `AWFProvisioner.audit_dir` holds what its pod
wrote: `policy.json` (the effective policy, written by the provisioner at
start), `dns.jsonl` (the resolver) and `access.jsonl` (Squid), plus rotated
copies (`.1`... / `.0`...). Records come out in one shape:

    {time, kernel_id, notebook, kind: dns|http|https, host, port, method,
     sni, server_addr, decision: allowed|denied, reason, rule, status, bytes}

The folder stays after the kernel ends; `awf-kernel logs` reads it.

Hosts, SNI values and methods are chosen by the kernel, i.e. by hostile code.
Every string in a record therefore passes `safe_text` as the record is made,
and again wherever it is printed: what comes out of this module is printable
ASCII only, so no log entry can print as two lines, move the cursor, recolour
the terminal or pose as a hyperlink. A record's decision is the log's own
verdict (Squid's status and bump step, the resolver's decision), never text
the kernel chose; its reason and rule are worked out from the escaped host,
so a look-alike or zero-width character never counts as the name it mimics.
Reading a log line, deciding and escaping are kernel_side/awf_records.py,
which the kernel-side notice (awf_notice.py) uses too: one interpretation.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import Iterator

from .errors import PolicyError
from .kernel_side import awf_records
from .kernel_side.awf_records import POLICY_FILE, REVERSE_ZONES, safe_text
from .kernel_side.awf_records import to_int as _int
from .naming import POOL_ID_PREFIX, valid_kernel_id
from .policy import is_ip_literal, normalize_host, parse_domain, parse_domains


def _rotated(folder: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Oldest first: Squid's name.N (0 newest) and the resolver's name.N (1 newest)."""
    older = sorted(folder.glob(name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [p for p in older if p.suffix[1:].isdigit()] + ([folder / name] if (folder / name).exists() else [])


def _lines(folder: pathlib.Path, name: str) -> Iterator[dict]:
    for path in _rotated(folder, name):
        yield from awf_records.parse_lines(path.read_text(errors="replace"))


def load_policy(folder: pathlib.Path) -> dict:
    """The kernel's policy.json (see the provisioner's `_audit_dir_for_kernel`), or {}."""
    try:
        meta = json.loads((folder / POLICY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def normalize_proxy(raw: dict, meta: dict) -> dict | None:
    """A Squid log line as a record (see the module docstring), or None."""
    rec = awf_records.proxy_record(raw)
    if rec is None:
        return None
    mismatch = rec.pop("host_mismatch")
    return explain(_with_kernel(rec, meta, meta.get("kernel_id")), meta, host_mismatch=mismatch)


def normalize_dns(raw: dict, meta: dict) -> dict:
    """A resolver log line as a record."""
    rec = awf_records.dns_record(raw)
    return explain(_with_kernel(rec, meta, raw.get("kernel_id") or meta.get("kernel_id")), meta)


def _with_kernel(rec: dict, meta: dict, kernel_id) -> dict:
    rec["kernel_id"] = None if kernel_id is None else safe_text(kernel_id)
    rec["notebook"] = None if meta.get("notebook") is None else safe_text(meta["notebook"])
    return rec


def explain(rec: dict, meta: dict, host_mismatch: bool = False) -> dict:
    """The record's reason and rule, worked out from its (escaped) host and the
    policy the kernel started with; the decision stays the log's own."""
    policy = meta.get("policy")
    if host_mismatch:
        rec["reason"], rec["rule"] = "host-mismatch", None
    elif not isinstance(policy, dict):
        rec["reason"], rec["rule"] = ("allowed" if rec["decision"] == "allowed" else "not-allowed"), None
    else:
        allowed, reason, rule = awf_records.decide(policy, rec.get("host") or "")
        if rec["decision"] == "denied" and allowed:
            reason, rule = "refused-by-proxy", None  # e.g. a port other than 80/443
        rec["reason"], rec["rule"] = reason, None if rule is None else safe_text(rule)
    return rec


def read_kernel(folder: pathlib.Path) -> list[dict]:
    meta = load_policy(folder)
    meta.setdefault("kernel_id", folder.name)
    out = [normalize_dns(r, meta) for r in _lines(folder, "dns.jsonl")]
    out += [r for r in (normalize_proxy(r, meta) for r in _lines(folder, "access.jsonl")) if r]
    out.sort(key=lambda r: r["time"])
    return out


def _is_kernel_id(name: str) -> bool:
    try:
        valid_kernel_id(name)
    except ValueError:
        return False
    return True


def kernels(audit_dir: str) -> list[pathlib.Path]:
    """The kernels' folders, oldest first. A folder whose name is not a kernel
    id (`naming.valid_kernel_id`) is not one of ours and is skipped."""
    base = pathlib.Path(audit_dir)
    if not base.is_dir():
        return []
    # (a warm pool's folders, "pool-...", and their links are not kernels')
    folders = (p for p in base.iterdir() if _is_kernel_id(p.name) and not p.name.startswith(POOL_ID_PREFIX)
               and not p.is_symlink() and p.is_dir())
    return sorted(folders, key=lambda p: p.stat().st_mtime)


def find_kernel(audit_dir: str, kernel_id: str | None) -> pathlib.Path | None:
    """The folder of a kernel by id or id prefix (the latest one without);
    ValueError if `kernel_id` is not a kernel id or prefix."""
    folders = kernels(audit_dir)
    if kernel_id is None:
        return folders[-1] if folders else None
    kernel_id = valid_kernel_id(kernel_id)
    matches = [f for f in folders if f.name.startswith(kernel_id)]
    return matches[-1] if matches else None


def records(audit_dir: str, kernel_id: str | None = None) -> list[dict]:
    folder = find_kernel(audit_dir, kernel_id)
    return read_kernel(folder) if folder else []


def display_host(rec: dict) -> str:
    """The host a record is about, safe to print (see `safe_text`)."""
    return safe_text(rec.get("host") or rec.get("sni") or "?")


INVALID_NAME = "not a valid host name (shown escaped)"


def why_not_allowable(host: str) -> str | None:
    """None if an allow_domains entry can allow `host`, else why not."""
    if is_ip_literal(host):
        return "an IP address: only names can be allowed"
    if normalize_host(host) is None:
        return INVALID_NAME
    if allow_entry(host) is None:
        return "a top-level domain or public suffix: name the registered domain"
    return None


def allow_entry(host: str) -> str | None:
    """The allow_domains entry that allows exactly `host`, or None when no
    entry can: raw IPs, names outside the host grammar (awf_kernel.policy),
    public suffixes, reverse-lookup names. Only this is ever suggested to paste
    into a notebook."""
    if not isinstance(host, str) or is_ip_literal(host):
        return None
    name = normalize_host(host)
    if name is None or name.endswith(REVERSE_ZONES):
        return None
    try:
        return str(parse_domain(name, "host"))
    except PolicyError:
        return None


def format_record(rec: dict) -> str:
    """One line per record, whatever the record holds."""
    import time as _time

    try:
        when = _time.strftime("%H:%M:%S", _time.localtime(float(rec.get("time") or 0)))
    except (TypeError, ValueError, OverflowError, OSError):
        when = "??:??:??"
    port = f":{_int(rec['port'])}" if _int(rec.get("port")) and rec.get("kind") != "dns" else ""
    why = f" ({safe_text(rec.get('reason'))}{', rule ' + safe_text(rec['rule']) if rec.get('rule') else ''})"
    server = f" server_addr={safe_text(rec['server_addr'])}" if rec.get("server_addr") else ""
    host = display_host(rec)
    if host != "?" and not is_ip_literal(host) and normalize_host(host) is None:
        host = f'"{host}" [{INVALID_NAME}]'
    return (f"{when} {safe_text(rec.get('decision', '?')):7} {safe_text(rec.get('kind', '')):5} "
            f"{safe_text(rec.get('method', ''))} {host}{port}{why}{server}")


def summary(recs: list[dict], meta: dict | None = None) -> dict:
    """Per-host counts, and what would allow the hosts the kernel needed.

    Counted by the record's own decision and keyed by the escaped host, so a
    host name cannot add rows, move counts to another host or suggest itself
    as an allow_domains entry unless it is a valid one (`allow_entry`).
    `add` holds the entries the notebook lacks: hosts denied only for not being
    in the allowlist (and, after a record-mode run, hosts reached that the
    notebook's own request does not cover), within the admin's ceiling.
    `request` is the notebook's request (`meta`, the kernel's policy.json) with
    them added, the whole object to paste, or None when the trail does not
    record the request. `suggestion` says it in one line.
    """
    meta = meta or {}
    allowed: Counter = Counter()
    denied: Counter = Counter()
    for r in recs:
        (allowed if r.get("decision") == "allowed" else denied)[display_host(r)] += 1
    hosts = (set(allowed) | set(denied)) - {"?"}
    refused = {h: why for h in sorted(hosts) if (why := why_not_allowable(h))}
    add = _entries_to_add(recs, meta)
    return {"allowed": dict(allowed), "denied": dict(denied), "add": add,
            "request": awf_records.extend_request(meta, add) if add else None,
            "suggestion": awf_records.suggestion(meta, add) if add else None, "not_allowable": refused}


def _entries_to_add(recs: list[dict], meta: dict) -> list[str]:
    policy, request = meta.get("policy"), meta.get("request")
    record_mode = isinstance(policy, dict) and policy.get("mode") == "record"
    own: tuple = ()
    if record_mode and isinstance(request, dict):
        try:
            own = parse_domains(request.get("allow_domains") or [], "policy.json request")
        except PolicyError:
            own = ()
    out = set()
    for r in recs:
        entry = allow_entry(display_host(r))
        if entry is None or not awf_records.within_ceiling(meta, entry):
            continue
        if r.get("decision") == "denied" and r.get("reason") == "not-allowed":
            out.add(entry)
        elif record_mode and r.get("decision") == "allowed" and not any(rule.matches(entry) for rule in own):
            out.add(entry)
    return sorted(out)


def format_summary(s: dict) -> str:
    lines = ["host                                     allowed  denied"]
    refused = s.get("not_allowable", {})
    for host in sorted(set(s["allowed"]) | set(s["denied"])):
        shown = f'"{safe_text(host)}"' if refused.get(host) == INVALID_NAME else safe_text(host)
        mark = f"  [{safe_text(refused[host])}]" if host in refused else ""
        allowed, denied = (_int(s[k].get(host, 0)) or 0 for k in ("allowed", "denied"))
        lines.append(f"{shown:40} {allowed:7} {denied:7}{mark}")
    lines.append("")
    if s.get("suggestion"):
        lines.append("to allow the hosts the notebook lacked: " + ", ".join(map(safe_text, s["add"])))
        lines.append(safe_text(s["suggestion"]))
    else:
        lines.append("nothing to add to the notebook's allow_domains")
    if refused:
        lines.append("")
        lines.append("seen, but no allow_domains entry can allow them:")
        lines += [f"  {safe_text(h)}: {safe_text(why)}" for h, why in refused.items()]
    return "\n".join(lines)
