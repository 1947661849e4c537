"""[awf-notice] Loaded into the sandboxed kernel: after each cell, show what
the sandbox denied during it and the metadata line that would allow it.

A denial must not look like a network bug ("could not resolve host"), so the
cell's output names each blocked host, why it was blocked and the fix. This
file runs in any image with ipykernel (stdlib + IPython only) and reads only
its own pod's logs, mounted read-only at AWF_AUDIT_DIR. It is a convenience,
not a security boundary: the kernel's code can disable it, never widen egress.
"""

from __future__ import annotations

import html
import json
import os
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
    except OSError:
        return host.replace(".", "").isdigit()


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
        found: dict[str, dict] = {}

        def add(host, port, via):
            if not host:
                return
            entry = found.setdefault(host, {"host": host, "ports": [], "via": []})
            if port and port not in entry["ports"]:
                entry["ports"].append(port)
            if via not in entry["via"]:
                entry["via"].append(via)

        for rec in self._new_lines("dns.jsonl"):
            if rec.get("decision") == "denied":
                add(rec.get("host"), None, "dns")
        for rec in self._new_lines("access.jsonl"):
            q = lambda k: urllib.parse.unquote(rec.get(k) or "-")  # noqa: E731
            host, sni, url = q("host"), q("sni"), q("url")
            denied = "DENIED" in rec.get("squid_status", "") or rec.get("bump") == "terminate" \
                or rec.get("status") == "409"
            if not denied:
                continue
            name = sni if sni != "-" and (host == "-" or _is_ip(host)) else host
            port = {"3129": 80, "3130": 443}.get(str(rec.get("squid_port")))
            if port is None:
                port = int(url.rsplit(":", 1)[1]) if q("method") == "CONNECT" and url.rsplit(":", 1)[-1].isdigit() \
                    else (443 if url.startswith("https:") else 80)
            add(name if name != "-" else None, port, "https" if port == 443 else "http")
        with _lock:
            for ip, port, via in _direct:
                add(ip, port, via)
        for entry in found.values():
            entry["reason"], entry["fix"] = self.explain(entry["host"], entry["ports"])
        return sorted(found.values(), key=lambda e: e["host"])

    def explain(self, host: str, ports: list[int]) -> tuple[str, str]:
        policy = self.meta.get("policy") or {}
        blocked = [r for r in policy.get("block_domains", []) if _matches(r, host)]
        ceiling = self.meta.get("ceiling")
        line = f'"awf": {{"allow_domains": [..., "{host}"]}}'
        if ports and all(p not in WEB_PORTS for p in ports):
            return (f"port {', '.join(map(str, ports))}: only ports 80 and 443 ever leave the sandbox",
                    "use HTTP(S) on ports 80/443")
        if _is_ip(host):
            return ("a raw IP address: only names can be allowed",
                    "use the host's name, and add that name to the notebook's awf.allow_domains")
        if blocked:
            return (f"in a block list ({blocked[0]})",
                    "remove it from the notebook's awf.block_domains, or ask the admin (block_domains)")
        allowed = [r for r in policy.get("allow_domains", []) if _matches(r, host)]
        if allowed:
            return ("refused by the proxy (the address did not match the name, or a non-web port)",
                    "connect by name, on port 80 or 443")
        if ceiling is not None and not any(_matches(r, host) for r in ceiling):
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

        text = ["awf-kernel blocked egress in this cell:"]
        rows = []
        for d in found:
            ports = ",".join(str(p) for p in d["ports"]) or "dns"
            text.append(f"  - {d['host']} ({ports}): {d['reason']}. Fix: {d['fix']}")
            rows.append(f"<tr><td><code>{html.escape(d['host'])}</code></td><td>{html.escape(ports)}</td>"
                        f"<td>{html.escape(d['reason'])}</td><td>{html.escape(d['fix'])}</td></tr>")
        snippet = json.dumps({"awf": {"allow_domains": sorted(d["host"] for d in found if not _is_ip(d["host"]))}})
        text.append(f"Metadata that would allow them: {snippet}")
        page = ("<div class='awf-notice' style='border-left:4px solid #d9534f;padding:4px 8px'>"
                "<b>awf-kernel blocked egress in this cell</b>"
                "<table><tr><th>host</th><th>port</th><th>why</th><th>how to allow</th></tr>"
                + "".join(rows) + f"</table><div>Metadata that would allow them: <code>{html.escape(snippet)}</code>"
                "</div></div>")
        publish_display_data({"text/plain": "\n".join(text), "text/html": page,
                              MIME: {"denials": found, "kernel_id": self.meta.get("kernel_id"),
                                     "notebook": self.meta.get("notebook")}})


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
