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
The kernel-side notice (kernel_side/awf_notice.py) cannot import this
package and keeps its own copy of `safe_text`; a test checks they agree.
"""

from __future__ import annotations

import json
import pathlib
import urllib.parse
from collections import Counter
from collections.abc import Iterator

from .errors import PolicyError
from .naming import valid_kernel_id
from .policy import Policy, is_ip_literal, normalize_host, parse_domain, parse_domains

POLICY_FILE = "policy.json"
PORT_OF_SQUID_PORT = {"3129": 80, "3130": 443}
TEXT_FIELDS = ("kernel_id", "notebook", "host", "method", "sni", "server_addr", "reason", "rule")


def safe_text(value) -> str:
    """`value` as text that is safe to print on a terminal, in a log or in HTML
    (after html.escape): printable ASCII (0x20-0x7e) stays, every other
    character becomes a visible escape (`\\x1b`, `\\x0a`, `\\u202e`,
    `\\U0001f600`), so an admin sees the attempt instead of its effect.

    That covers C0/C1 controls and DEL (newlines, ANSI/OSC sequences, OSC 8
    links), bidi overrides, zero-width characters and look-alike letters
    (`pyp\\u0456.org` is not `pypi.org`). Idempotent: the output is printable
    ASCII, so escaping twice changes nothing. Keep in step with the copy in
    kernel_side/awf_notice.py.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _safe_record(rec: dict) -> dict:
    for key in TEXT_FIELDS:
        if rec.get(key) is not None:
            rec[key] = safe_text(rec[key])
    return rec


def _rotated(folder: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Oldest first: Squid's name.N (0 newest) and the resolver's name.N (1 newest)."""
    older = sorted(folder.glob(name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [p for p in older if p.suffix[1:].isdigit()] + ([folder / name] if (folder / name).exists() else [])


def _lines(folder: pathlib.Path, name: str) -> Iterator[dict]:
    for path in _rotated(folder, name):
        # "\n" only: str.splitlines() would also split at \x1c-\x1e, \x85 and U+2028/9
        for line in path.read_text(errors="replace").split("\n"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


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
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def _time(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def normalize_proxy(raw: dict, meta: dict, policy: Policy | None) -> dict | None:
    host, sni, url = _unq(raw.get("host")), _unq(raw.get("sni")), _unq(raw.get("url")) or ""
    if not host and not sni:
        return None
    method = _unq(raw.get("method")) or "-"
    squid_status, status, bump = str(raw.get("squid_status", "")), str(raw.get("status", "")), _unq(raw.get("bump"))
    port = PORT_OF_SQUID_PORT.get(str(raw.get("squid_port")))
    if port is None:
        if method == "CONNECT" and ":" in url:
            port = _int(url.rsplit(":", 1)[1])
        else:
            port = 443 if url.startswith("https:") else 80
    name = sni if sni and (not host or is_ip_literal(host)) else host
    # Squid's own verdict: its status code, its bump step, a 409 from host_verify_strict.
    denied = "DENIED" in squid_status or bump == "terminate" or status == "409"
    if not denied and method == "CONNECT" and bump == "splice" and status in ("0", "-"):
        return None  # the intercept port's first step; the spliced tunnel has its own line
    rec = {
        "time": _time(raw.get("time", 0)), "kernel_id": meta.get("kernel_id"), "notebook": meta.get("notebook"),
        "kind": "https" if (port == 443 or sni) else "http", "host": name, "port": port, "method": method,
        "sni": sni, "server_addr": _unq(raw.get("server_addr")),
        "decision": "denied" if denied else "allowed", "status": _int(status), "bytes": _int(raw.get("bytes")) or 0,
    }
    return explain(_safe_record(rec), policy, host_mismatch=status == "409")


def normalize_dns(raw: dict, meta: dict, policy: Policy | None) -> dict:
    rec = {
        "time": _time(raw.get("time", 0)), "kernel_id": raw.get("kernel_id") or meta.get("kernel_id"),
        "notebook": meta.get("notebook"), "kind": "dns", "host": raw.get("host"), "port": 53,
        "method": f"DNS {_int(raw.get('qtype'))}", "sni": None, "server_addr": None,
        # the resolver's own verdict; anything but a plain "allowed" counts as denied
        "decision": "allowed" if raw.get("decision") == "allowed" else "denied",
        "status": None, "bytes": 0,
    }
    return explain(_safe_record(rec), policy)


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
    if not isinstance(meta, dict):
        meta = {}
    meta.setdefault("kernel_id", folder.name)
    policy = _policy_of(meta)
    out = [normalize_dns(r, meta, policy) for r in _lines(folder, "dns.jsonl")]
    out += [r for r in (normalize_proxy(r, meta, policy) for r in _lines(folder, "access.jsonl")) if r]
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
    folders = (p for p in base.iterdir() if _is_kernel_id(p.name) and p.is_dir())
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
    public suffixes. Only this is ever suggested to paste into a notebook."""
    if not isinstance(host, str) or is_ip_literal(host):
        return None
    name = normalize_host(host)
    if name is None:
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


def summary(recs: list[dict]) -> dict:
    """Per-host counts and the allow_domains a notebook would need.

    Counted by the record's own decision and keyed by the escaped host, so a
    host name cannot add rows, move counts to another host or suggest itself
    as an allow_domains entry unless it is a valid one (`allow_entry`).
    """
    allowed: Counter = Counter()
    denied: Counter = Counter()
    for r in recs:
        (allowed if r.get("decision") == "allowed" else denied)[display_host(r)] += 1
    hosts = (set(allowed) | set(denied)) - {"?"}
    needed = sorted({e for e in (allow_entry(h) for h in hosts) if e})
    refused = {h: why for h in sorted(hosts) if (why := why_not_allowable(h))}
    return {"allowed": dict(allowed), "denied": dict(denied), "allow_domains": needed, "not_allowable": refused}


def format_summary(s: dict) -> str:
    lines = ["host                                     allowed  denied"]
    refused = s.get("not_allowable", {})
    for host in sorted(set(s["allowed"]) | set(s["denied"])):
        shown = f'"{safe_text(host)}"' if refused.get(host) == INVALID_NAME else safe_text(host)
        mark = f"  [{safe_text(refused[host])}]" if host in refused else ""
        allowed, denied = (_int(s[k].get(host, 0)) or 0 for k in ("allowed", "denied"))
        lines.append(f"{shown:40} {allowed:7} {denied:7}{mark}")
    lines.append("")
    lines.append("paste into the notebook's metadata to allow every host seen:")
    lines.append(json.dumps({"awf": {"allow_domains": s["allow_domains"]}}, indent=1))
    if refused:
        lines.append("")
        lines.append("seen, but no allow_domains entry can allow them:")
        lines += [f"  {safe_text(h)}: {safe_text(why)}" for h, why in refused.items()]
    return "\n".join(lines)
