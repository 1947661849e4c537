"""Reading a kernel's egress audit trail (written by its pod's proxy).

Each kernel's folder under `AWFProvisioner.audit_dir` holds `dns.jsonl` (the
resolver's JSON lines) and `access.log` (Squid's lines in the `awf`
logformat of render/squid.py); both are turned into one JSON record shape.
"""

from __future__ import annotations

import json
import pathlib
import urllib.parse
from collections.abc import Iterator

# Field order of the `awf` logformat in render/squid.py.
SQUID_FIELDS = ("time", "client", "squid_port", "method", "host", "port", "sni", "squid_status", "status",
                "bytes", "bump")


def parse_squid_line(line: str, kernel_id: str) -> dict | None:
    parts = line.split()
    if len(parts) != len(SQUID_FIELDS):
        return None
    raw = dict(zip(SQUID_FIELDS, parts))
    dash = lambda v: None if v == "-" else urllib.parse.unquote(v)  # noqa: E731
    sni, bump = dash(raw["sni"]), dash(raw["bump"])
    denied = "DENIED" in raw["squid_status"] or bump == "terminate"
    return {
        "time": float(raw["time"]),
        "kind": "https" if (sni or raw["method"] == "CONNECT") else "http",
        "kernel_id": kernel_id,
        "host": dash(raw["host"]),
        "port": int(raw["port"]) if raw["port"].isdigit() else None,
        "method": raw["method"],
        "sni": sni,
        "decision": "denied" if denied else "allowed",
        "status": int(raw["status"]) if raw["status"].isdigit() else None,
        "bytes": int(raw["bytes"]) if raw["bytes"].isdigit() else 0,
        "squid": raw["squid_status"],
        "bump": bump,
    }


def read_kernel(folder: pathlib.Path) -> list[dict]:
    kernel_id = folder.name
    records: list[dict] = []
    dns = folder / "dns.jsonl"
    if dns.exists():
        for line in dns.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    access = folder / "access.log"
    if access.exists():
        for line in access.read_text(errors="replace").splitlines():
            rec = parse_squid_line(line, kernel_id)
            if rec:
                records.append(rec)
    records.sort(key=lambda r: r.get("time", 0))
    return records


def kernels(audit_dir: str) -> list[pathlib.Path]:
    base = pathlib.Path(audit_dir)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def records(audit_dir: str, kernel_id: str | None = None) -> Iterator[dict]:
    for folder in kernels(audit_dir):
        if kernel_id and not folder.name.startswith(kernel_id):
            continue
        yield from read_kernel(folder)


def display_host(rec: dict) -> str:
    """The name a record is about: the SNI when Squid only saw an address."""
    host, sni = rec.get("host"), rec.get("sni")
    if sni and (not host or host.replace(".", "").isdigit()):
        return sni
    return host or sni or "?"


def format_record(rec: dict) -> str:
    import time as _time

    when = _time.strftime("%H:%M:%S", _time.localtime(rec.get("time", 0)))
    host = display_host(rec)
    port = f":{rec['port']}" if rec.get("port") else ""
    what = rec.get("method") or f"DNS {rec.get('qtype', '')}"
    return f"{when} {rec.get('kernel_id', '')[:8]} {rec.get('decision', '?'):7} {rec.get('kind', ''):5} {what} {host}{port}"
