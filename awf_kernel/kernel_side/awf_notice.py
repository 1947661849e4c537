"""[awf-notice] Loaded into the sandboxed kernel: after each cell, show what
the sandbox denied during it and the metadata line that would allow it.

A denial must not look like a network bug ("could not resolve host"), so the
cell's output names each blocked host, why it was blocked and the fix. This
file runs in any image with ipykernel (stdlib + IPython only) and reads only
its own pod's logs, mounted read-only at AWF_AUDIT_DIR. It is a convenience,
not a security boundary: the kernel's code can disable it, never widen egress.

The logs are read by awf_records.py beside this file, the same code as
`awf-kernel logs` uses. Hosts in the logs were chosen by the kernel's code,
so every one is shown through `safe_text` (C0/C1 controls, DEL, ESC
sequences, bidi and zero-width characters become visible escapes like
`\\x1b` and `\\u202e`), HTML-escaped in text/html, and suggested for
allow_domains only when it is a valid host name. The suggestion extends the
notebook's own request (policy.json): pasted, it keeps the entries it had.
"""

from __future__ import annotations

import html
import json
import os
import socket
import threading
import time

try:  # in the package: awf_kernel.kernel_side
    from . import awf_records as records
except ImportError:  # in the kernel: this folder is /awf/lib, on sys.path
    import awf_records as records  # type: ignore[no-redef]

MIME = "application/vnd.awf.denials+json"
AUDIT_DIR = os.environ.get("AWF_AUDIT_DIR", "/awf/audit")
WEB_PORTS = records.WEB_PORTS
safe_text = records.safe_text
host_name = records.host_name

_direct: list[tuple[str, int, str]] = []
_lock = threading.Lock()
_activity = threading.Event()  # set by any IP connect/sendto in this process during a cell


class Notice:
    def __init__(self, shell, audit_dir: str = AUDIT_DIR):
        self.shell = shell
        self.audit_dir = audit_dir
        self.offsets: dict[str, int] = {}
        try:
            with open(os.path.join(audit_dir, records.POLICY_FILE)) as f:
                self.meta = json.load(f)
        except (OSError, ValueError):
            self.meta = {}
        if not isinstance(self.meta, dict):
            self.meta = {}

    # --- what was denied -----------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.audit_dir, name)

    def mark(self, *_args) -> None:
        for name in ("access.jsonl", "dns.jsonl"):
            try:
                self.offsets[name] = os.path.getsize(self._path(name))
            except OSError:
                self.offsets[name] = 0
        with _lock:
            _direct.clear()
        _activity.clear()

    def _grew(self) -> bool:
        for name, start in self.offsets.items():
            try:
                if os.path.getsize(self._path(name)) != start:
                    return True
            except OSError:
                continue
        return False

    def _new_lines(self, name: str) -> list[dict]:
        try:
            with open(self._path(name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = self.offsets.get(name, 0)
                f.seek(start if start <= size else 0)  # rotated: read the new file whole
                data = f.read()
        except OSError:
            return []
        return records.parse_lines(data.decode(errors="replace"))

    def denials(self) -> list[dict]:
        """One entry per denied host: {host (escaped, see safe_text), ports, via,
        valid_name, reason, fix, addable: whether an allow_domains entry alone
        would allow it}. Denied means the log's own verdict (Squid's
        status and bump step, the resolver's decision), never text in it."""
        found: dict[str, dict] = {}
        names: dict[str, str | None] = {}

        def add(host, port, via):
            if not host:
                return
            shown = safe_text(host)
            entry = found.setdefault(shown, {"host": shown, "ports": [], "via": []})
            names.setdefault(shown, host_name(host))
            if port and port not in entry["ports"]:
                entry["ports"].append(port)
            if via not in entry["via"]:
                entry["via"].append(via)

        for raw in self._new_lines("dns.jsonl"):
            rec = records.dns_record(raw)
            if rec["decision"] == "denied":
                add(rec["host"], None, "dns")
        for raw in self._new_lines("access.jsonl"):
            proxied = records.proxy_record(raw)
            if proxied is not None and proxied["decision"] == "denied":
                add(proxied["host"], proxied["port"], proxied["kind"])
        with _lock:
            for ip, port, via in _direct:
                add(ip, port, via)
        for shown, entry in found.items():
            entry["valid_name"] = names[shown] is not None
            entry["reason"], entry["fix"], entry["addable"] = self.explain(shown, names[shown], entry["ports"])
        return sorted(found.values(), key=lambda e: e["host"])

    def explain(self, shown: str, name: str | None, ports: list[int]) -> tuple[str, str, bool]:
        """Why `shown` (an escaped host) was denied, what would allow it, and
        whether an allow_domains entry in the notebook alone would; `name` is
        its canonical host name, None when it is not a valid one."""
        policy = self.meta.get("policy")
        if not isinstance(policy, dict):
            policy = {}
        if ports and all(p not in WEB_PORTS for p in ports):
            return (f"port {', '.join(map(str, ports))}: only ports 80 and 443 ever leave the sandbox",
                    "use HTTP(S) on ports 80/443", False)
        if records.is_ip_literal(shown):
            return ("a raw IP address: only names can be allowed",
                    "use the host's name, and add that name to the notebook's awf.allow_domains", False)
        if name is None:
            return ("not a valid host name (shown escaped): no allow_domains entry can allow it",
                    "none in the metadata: the code asked for a malformed name; check where it came from", False)
        line = f'"awf": {{"allow_domains": [..., "{name}"]}}'
        allowed, reason, rule = records.decide(policy, name)
        if reason == "blocked":
            return (f"in a block list ({safe_text(rule)})",
                    "remove it from the notebook's awf.block_domains, or ask the admin (block_domains)", False)
        if allowed:
            return ("refused by the proxy (the address did not match the name, or a non-web port)",
                    "connect by name, on port 80 or 443", False)
        if not records.within_ceiling(self.meta, name):
            return ("outside the admin's domain_ceiling",
                    "ask the administrator to add it to AWFProvisioner.domain_ceiling, then add " + line, False)
        return ("not in the allowlist",
                "add it to the notebook metadata: " + line + ", save, restart the kernel", True)

    # --- showing it ------------------------------------------------------------------
    def show(self, *_args) -> None:
        if not (_activity.is_set() or self._grew()):
            return  # no network use in this cell (the common case): cost nothing
        time.sleep(0.05)  # Squid writes a denied transaction's line as it closes
        found = self.denials()
        if not found:
            return
        from IPython.display import publish_display_data

        publish_display_data(self.render(found))

    def render(self, found: list[dict]) -> dict:
        """The notice as a mime bundle. Every log-derived string is safe_text'ed,
        and HTML-escaped in text/html; the metadata line lists valid names only."""
        text = ["awf-kernel blocked egress in this cell:"]
        rows = []
        # JupyterLab's rendered-HTML tables right-align their cells: this one reads left to right.
        cell = "text-align:left;vertical-align:top;padding:2px 8px"
        for d in found:
            host, reason, fix = safe_text(d["host"]), safe_text(d["reason"]), safe_text(d["fix"])
            ports = safe_text(",".join(str(p) for p in d["ports"]) or "dns")
            text.append(f"  - {host} ({ports}): {reason}. Fix: {fix}")
            rows.append(f"<tr><td style='{cell}'><code>{html.escape(host)}</code></td>"
                        f"<td style='{cell}'>{html.escape(ports)}</td><td style='{cell}'>{html.escape(reason)}</td>"
                        f"<td style='{cell}'>{html.escape(fix)}</td></tr>")
        names = sorted({n for n in (host_name(d["host"]) for d in found if d.get("valid_name") and d.get("addable"))
                        if n})
        line = safe_text(records.suggestion(self.meta, names))
        text.append(line)
        head = "".join(f"<th style='{cell}'>{h}</th>" for h in ("host", "port", "why", "how to allow"))
        page = ("<div class='awf-notice' style='border-left:4px solid #d9534f;padding:4px 8px;text-align:left'>"
                "<b>awf-kernel blocked egress in this cell</b>"
                f"<table style='text-align:left;margin-left:0'><tr>{head}</tr>" + "".join(rows) + "</table>"
                f"<div>{_code_after_colon(line)}</div></div>")
        meta = {k: None if self.meta.get(k) is None else safe_text(self.meta[k]) for k in ("kernel_id", "notebook")}
        return {"text/plain": "\n".join(text), "text/html": page, MIME: {"denials": found, **meta}}


def _code_after_colon(line: str) -> str:
    """The suggestion line as HTML, its JSON in <code>."""
    label, sep, snippet = line.partition(": ")
    if not sep or not snippet.startswith(("{", "[")):
        return html.escape(line)
    return f"{html.escape(label)}: <code>{html.escape(snippet)}</code>"


def _note(address, via: str) -> None:
    try:
        host, port = address[0], int(address[1])
        if port in WEB_PORTS or host.startswith("127.") or host in ("::1", "localhost"):
            return
        with _lock:
            _direct.append((host, port, via))
    except Exception:  # noqa: BLE001 - never break the user's socket call
        pass


def _patch_socket() -> None:
    """Direct connections are refused by iptables, which logs nothing the
    kernel can read; note them where they fail instead."""
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _activity.set()
        try:
            return original_connect(self, address)
        except (ConnectionRefusedError, ConnectionResetError, PermissionError):
            _note(address, "tcp")
            raise

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _activity.set()
        code = original_connect_ex(self, address)
        if code:
            _note(address, "tcp")
        return code

    def sendto(self, data, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _activity.set()
        try:
            return original_sendto(self, data, *args)
        except PermissionError:
            _note(args[-1], "udp")
            raise

    for name, patched in (("connect", connect), ("connect_ex", connect_ex), ("sendto", sendto)):
        setattr(socket.socket, name, patched)


def load_ipython_extension(ip) -> None:
    notice = Notice(ip)
    notice.mark()
    _patch_socket()
    ip.events.register("pre_run_cell", notice.mark)
    ip.events.register("post_run_cell", notice.show)
