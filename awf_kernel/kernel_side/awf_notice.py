"""[awf-notice] Loaded into the sandboxed kernel: after each cell, show what
the sandbox denied during it and the metadata line that would allow it.

A denial must not look like a network bug ("could not resolve host"), so the
cell's output names each blocked host, why it was blocked and the fix. This
file runs in any image with ipykernel (stdlib + IPython only) and reads only
its own pod's logs, mounted read-only at AWF_AUDIT_DIR. It is a convenience,
not a security boundary: the kernel's code can disable it, never widen egress.

Hosts in the logs were chosen by the kernel's code, so every one is shown
through `safe_text` (C0/C1 controls, DEL, ESC sequences, bidi and zero-width
characters become visible escapes like `\\x1b` and `\\u202e`), HTML-escaped in
text/html, and suggested for allow_domains only when it is a valid host name.
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import threading
import time
import urllib.parse

MIME = "application/vnd.awf.denials+json"
AUDIT_DIR = os.environ.get("AWF_AUDIT_DIR", "/awf/audit")
WEB_PORTS = (80, 443)

_direct: list[tuple[str, int, str]] = []
_lock = threading.Lock()
_activity = threading.Event()  # set by any IP connect/sendto in this process during a cell


def safe_text(value) -> str:
    """A copy of awf_kernel.audit.safe_text (this file cannot import the
    package; tests/unit/test_audit_escaping.py checks they agree): printable
    ASCII stays, every other character becomes a visible escape."""
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


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def host_name(host) -> str | None:
    """The canonical name if `host` is a valid ASCII host name (awf_kernel.policy's
    grammar, with at least one dot), else None. Only these are ever suggested
    as allow_domains entries. Stricter than the package: no IDN (the logs carry
    punycode) and no public suffix list (a suffix like co.uk passes here and is
    refused at kernel start)."""
    if not isinstance(host, str) or not host.isascii():
        return None
    name = host[:-1] if host.endswith(".") else host
    name = name.lower()
    if not name or len(name) > 253 or _is_ip(name):
        return None
    labels = name.split(".")
    if len(labels) < 2 or _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return name if all(_LABEL.fullmatch(label) for label in labels) else None


def _matches(rule: str, host: str) -> bool:
    if rule.startswith("*."):
        return host.endswith(rule[1:])
    if rule.startswith("."):
        return host == rule[1:] or host.endswith(rule)
    return host == rule


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
        return True
    except (OSError, ValueError):
        return host.replace(".", "").isascii() and host.replace(".", "").isdigit()


class Notice:
    def __init__(self, shell, audit_dir: str = AUDIT_DIR):
        self.shell = shell
        self.audit_dir = audit_dir
        self.offsets: dict[str, int] = {}
        try:
            with open(os.path.join(audit_dir, "policy.json")) as f:
                self.meta = json.load(f)
        except (OSError, ValueError):
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
        out = []
        for line in data.decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def denials(self) -> list[dict]:
        """One entry per denied host: {host (escaped, see safe_text), ports, via,
        valid_name, reason, fix}. Denied means the log's own verdict (Squid's
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

        for rec in self._new_lines("dns.jsonl"):
            if rec.get("decision") != "allowed":  # as awf_kernel.audit: only a plain "allowed" is allowed
                add(rec.get("host"), None, "dns")
        for rec in self._new_lines("access.jsonl"):
            q = lambda k: urllib.parse.unquote(str(rec.get(k) or "-"))  # noqa: E731
            host, sni, url = q("host"), q("sni"), q("url")
            denied = "DENIED" in str(rec.get("squid_status", "")) or rec.get("bump") == "terminate" \
                or str(rec.get("status")) == "409"
            if not denied:
                continue
            name = sni if sni != "-" and (host == "-" or _is_ip(host)) else host
            port = {"3129": 80, "3130": 443}.get(str(rec.get("squid_port")))
            if port is None:
                tail = url.rsplit(":", 1)[-1]
                port = int(tail) if q("method") == "CONNECT" and tail.isascii() and tail.isdigit() \
                    else (443 if url.startswith("https:") else 80)
            add(name if name != "-" else None, port, "https" if port == 443 else "http")
        with _lock:
            for ip, port, via in _direct:
                add(ip, port, via)
        for shown, entry in found.items():
            entry["valid_name"] = names[shown] is not None
            entry["reason"], entry["fix"] = self.explain(shown, names[shown], entry["ports"])
        return sorted(found.values(), key=lambda e: e["host"])

    def explain(self, shown: str, name: str | None, ports: list[int]) -> tuple[str, str]:
        """Why `shown` (an escaped host) was denied and what would allow it; `name`
        is its canonical host name, None when it is not a valid one."""
        policy = self.meta.get("policy") or {}
        ceiling = self.meta.get("ceiling")
        if ports and all(p not in WEB_PORTS for p in ports):
            return (f"port {', '.join(map(str, ports))}: only ports 80 and 443 ever leave the sandbox",
                    "use HTTP(S) on ports 80/443")
        if _is_ip(shown):
            return ("a raw IP address: only names can be allowed",
                    "use the host's name, and add that name to the notebook's awf.allow_domains")
        if name is None:
            return ("not a valid host name (shown escaped): no allow_domains entry can allow it",
                    "none in the metadata: the code asked for a malformed name; check where it came from")
        line = f'"awf": {{"allow_domains": [..., "{name}"]}}'
        blocked = [r for r in policy.get("block_domains", []) if _matches(r, name)]
        if blocked:
            return (f"in a block list ({safe_text(blocked[0])})",
                    "remove it from the notebook's awf.block_domains, or ask the admin (block_domains)")
        allowed = [r for r in policy.get("allow_domains", []) if _matches(r, name)]
        if allowed:
            return ("refused by the proxy (the address did not match the name, or a non-web port)",
                    "connect by name, on port 80 or 443")
        if ceiling is not None and not any(_matches(r, name) for r in ceiling):
            return ("outside the admin's domain_ceiling",
                    "ask the administrator to add it to AWFProvisioner.domain_ceiling, then add " + line)
        return ("not in the allowlist", "add it to the notebook metadata: " + line + ", save, restart the kernel")

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
        for d in found:
            host, reason, fix = safe_text(d["host"]), safe_text(d["reason"]), safe_text(d["fix"])
            ports = safe_text(",".join(str(p) for p in d["ports"]) or "dns")
            text.append(f"  - {host} ({ports}): {reason}. Fix: {fix}")
            rows.append(f"<tr><td><code>{html.escape(host)}</code></td><td>{html.escape(ports)}</td>"
                        f"<td>{html.escape(reason)}</td><td>{html.escape(fix)}</td></tr>")
        names = sorted({n for n in (host_name(d["host"]) for d in found if d.get("valid_name")) if n})
        snippet = json.dumps({"awf": {"allow_domains": names}})
        text.append(f"Metadata that would allow them: {snippet}")
        page = ("<div class='awf-notice' style='border-left:4px solid #d9534f;padding:4px 8px'>"
                "<b>awf-kernel blocked egress in this cell</b>"
                "<table><tr><th>host</th><th>port</th><th>why</th><th>how to allow</th></tr>"
                + "".join(rows) + f"</table><div>Metadata that would allow them: <code>{html.escape(snippet)}</code>"
                "</div></div>")
        meta = {k: None if self.meta.get(k) is None else safe_text(self.meta[k]) for k in ("kernel_id", "notebook")}
        return {"text/plain": "\n".join(text), "text/html": page, MIME: {"denials": found, **meta}}


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

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto


def load_ipython_extension(ip) -> None:
    notice = Notice(ip)
    notice.mark()
    _patch_socket()
    ip.events.register("pre_run_cell", notice.mark)
    ip.events.register("post_run_cell", notice.show)
