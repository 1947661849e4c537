"""[awf-records] The one reading of a pod's egress logs, shared by
`awf-kernel logs` (awf_kernel.audit) and the in-cell notice (awf_notice).

It runs in two places: in the package, as awf_kernel.kernel_side.awf_records,
and inside the kernel container, where this folder is mounted read-only at
/awf/lib (on sys.path) and awf_kernel itself is not installed. So it uses the
standard library only, and nothing newer than Python 3.8 (any image with
ipykernel may be the kernel image).

- `safe_text`: hosts, SNI values and methods in the logs were chosen by the
  kernel's code; every string taken from a log is passed through it, as the
  record is made and again wherever it is printed.
- The host grammar's ASCII core (`is_ip_literal`, `ascii_name`): the same
  functions awf_kernel.policy builds its grammar on (it adds IDNA and the
  public suffix list), so the notice cannot miss an IP form the policy
  catches. `decide` is Policy.decide for the policy policy.json records;
  tests/unit/test_resolver.py checks the two agree.
- `proxy_record` / `dns_record`: one log line -> one record. A record's
  decision is the log's own verdict (Squid's status and bump step, the
  resolver's decision), never text the kernel chose.
- `extend_request` / `suggestion`: what to paste to allow more hosts: the
  notebook's own request with the hosts added, never a list that would
  replace the entries it already has.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse

POLICY_FILE = "policy.json"
MAX_HOST = 253
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch: "$" would admit "\n"
# A last label like this makes URL parsers (WHATWG, browsers) read the whole
# name as an IPv4 address, so such a "name" is never a DNS name.
NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# inet_aton's forms (integer, octal, hex, short dotted) are IPs to a socket too.
_INET_ATON = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?")
# Squid's intercept ports (awf_kernel.render.ports; a unit test keeps them
# equal) -> the port the client dialled before the firewall redirected it.
INTERCEPT_PORTS = {"3129": 80, "3130": 443}
WEB_PORTS = (80, 443)
TEXT_FIELDS = ("kernel_id", "notebook", "host", "method", "sni", "server_addr", "reason", "rule")


def safe_text(value) -> str:
    """`value` as text that is safe to print on a terminal, in a log or in HTML
    (after html.escape): printable ASCII (0x20-0x7e) stays, every other
    character becomes a visible escape (`\\x1b`, `\\x0a`, `\\u202e`,
    `\\U0001f600`), so an admin sees the attempt instead of its effect.

    That covers C0/C1 controls and DEL (newlines, ANSI/OSC sequences, OSC 8
    links), bidi overrides, zero-width characters and look-alike letters
    (`pyp\\u0456.org` is not `pypi.org`). Idempotent: the output is printable
    ASCII, so escaping twice changes nothing.
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


# --- the host grammar's ASCII core ------------------------------------------------------------------


def is_ip_literal(host) -> bool:
    """Whether a socket would read `host` as an IP address (any form, brackets allowed)."""
    if not isinstance(host, str):
        return False
    text = host.strip().strip("[]")
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return bool(_INET_ATON.fullmatch(text.lower()))


REVERSE_ZONES = (".in-addr.arpa", ".ip6.arpa")


def ascii_name(name: str) -> str | None:
    """`name` in lower case if it is an ASCII host name of the policy's
    grammar (labels of letters, digits and inner '-', no numeric last label),
    else None. The caller has removed one trailing dot."""
    if not name.isascii():
        return None
    name = name.lower()
    if not name or len(name) > MAX_HOST:
        return None
    labels = name.split(".")
    if NUMERIC_LABEL.fullmatch(labels[-1]) or not all(LABEL.fullmatch(label) for label in labels):
        return None
    return name


def runtime_name(host) -> str | None:
    """A host from a log in canonical form, or None (IPs, anything outside the
    grammar). awf_kernel.policy.normalize_host without IDNA: logs carry punycode."""
    if not isinstance(host, str) or not host or is_ip_literal(host):
        return None
    return ascii_name(host[:-1] if host.endswith(".") else host)


def host_name(host) -> str | None:
    """The canonical name if `host` could be named by an allow_domains entry,
    else None. Short of the public suffix list, which only the package has (a
    suffix like co.uk passes here; awf_kernel.audit.allow_entry refuses it)."""
    name = runtime_name(host)
    if name is None or "." not in name:
        return None
    # A reverse lookup (a kernel asking who 169.254.253.2 is) names no host an
    # entry could let it reach: never suggested.
    return None if name.endswith(REVERSE_ZONES) else name


def matches(rule: str, name: str) -> bool:
    """Whether the canonical entry `rule` (`host`, `*.host`, `.host`) matches the canonical `name`."""
    if rule.startswith("*."):
        return name.endswith(rule[1:])
    if rule.startswith("."):
        return name == rule[1:] or name.endswith(rule)
    return name == rule


def _entries(value) -> list[str]:
    return [e for e in value if isinstance(e, str)] if isinstance(value, list) else []


def decide(policy: dict, host) -> tuple[bool, str, str | None]:
    """(allowed, reason, rule) for `host` under policy.json's `policy` (canonical
    entries, presets expanded), as awf_kernel.policy.Policy.decide: deny wins."""
    if is_ip_literal(host):
        return False, "raw-ip", None
    name = runtime_name(host)
    if name is None:
        return False, "invalid-host", None
    for rule in _entries(policy.get("block_domains")):
        if matches(rule, name):
            return False, "blocked", rule
    for rule in _entries(policy.get("allow_domains")):
        if matches(rule, name):
            return True, "allowed", rule
    if policy.get("allow_all") is True:
        return True, "allowed", None
    return False, "not-allowed", None


def within_ceiling(meta: dict, name: str) -> bool:
    """Whether the admin's domain_ceiling (policy.json's `ceiling`; None = none) admits `name`."""
    ceiling = meta.get("ceiling")
    return ceiling is None or any(matches(rule, name) for rule in _entries(ceiling))


# --- log lines -> records ---------------------------------------------------------------------------------


def parse_lines(data: str) -> list[dict]:
    """The JSON objects of a JSON-lines log. Split at "\\n" only: str.splitlines()
    would also split at \\x1c-\\x1e, \\x85 and U+2028/9 inside a value."""
    out = []
    for line in data.split("\n"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _unq(value):
    if value in (None, "", "-"):
        return None
    return urllib.parse.unquote(str(value))


def to_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def _time(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _safe(rec: dict) -> dict:
    for key in TEXT_FIELDS:
        if rec.get(key) is not None:
            rec[key] = safe_text(rec[key])
    return rec


def proxy_record(raw: dict) -> dict | None:
    """One line of Squid's access log (awf_kernel.render.squid's logformat,
    client values URL-encoded) as a record, or None for a line that names no
    host or is no request of its own (an intercepted TLS connection's first
    step, when it is spliced: the tunnel has its own line).

    `host_mismatch` is True for Squid's 409 (Host header or SNI not matching
    the destination). Hostname-bearing fields are safe_text'ed."""
    host, sni, url = _unq(raw.get("host")), _unq(raw.get("sni")), _unq(raw.get("url")) or ""
    if not host and not sni:
        return None
    method = _unq(raw.get("method")) or "-"
    squid_status, status, bump = str(raw.get("squid_status", "")), str(raw.get("status", "")), _unq(raw.get("bump"))
    port = INTERCEPT_PORTS.get(str(raw.get("squid_port")))
    if port is None:
        if method == "CONNECT" and ":" in url:
            port = to_int(url.rsplit(":", 1)[1])
        else:
            port = 443 if url.startswith("https:") else 80
    name = sni if sni and (not host or is_ip_literal(host)) else host
    # Squid's own verdict: its status code, its bump step, a 409 from host_verify_strict.
    denied = "DENIED" in squid_status or bump == "terminate" or status == "409"
    if not denied and method == "CONNECT" and bump == "splice" and status in ("0", "-"):
        return None
    return _safe({
        "time": _time(raw.get("time", 0)), "kind": "https" if (port == 443 or sni) else "http",
        "host": name, "port": port, "method": method, "sni": sni, "server_addr": _unq(raw.get("server_addr")),
        "decision": "denied" if denied else "allowed", "status": to_int(status),
        "bytes": to_int(raw.get("bytes")) or 0, "host_mismatch": status == "409",
    })


def dns_record(raw: dict) -> dict:
    """One line of the pod resolver's log as a record. Anything but a plain
    "allowed" decision counts as denied."""
    return _safe({
        "time": _time(raw.get("time", 0)), "kind": "dns", "host": raw.get("host"), "port": 53,
        "method": f"DNS {to_int(raw.get('qtype'))}", "sni": None, "server_addr": None,
        "decision": "allowed" if raw.get("decision") == "allowed" else "denied",
        "status": None, "bytes": 0,
    })


# --- what to paste to allow more ------------------------------------------------------------------------------


def extend_request(meta: dict, names: list[str]) -> dict | None:
    """The request this kernel started with (policy.json's `request`: the
    notebook's `awf` object, or AWF_POLICY, as written) with `names` added to
    its allow_domains: the whole object, so pasting it keeps every entry the
    notebook already has. None when the trail does not say what was asked for
    (a kernel started by an older awf-kernel)."""
    if "request" not in meta:
        return None
    request = meta["request"] if isinstance(meta["request"], dict) else {}  # None: the notebook asked nothing
    allow = [safe_text(e) for e in _entries(request.get("allow_domains"))]
    out: dict = {"allow_domains": allow + [n for n in names if n not in allow]}
    block = [safe_text(e) for e in _entries(request.get("block_domains"))]
    if block:
        out["block_domains"] = block
    return out


def suggestion(meta: dict, names: list[str]) -> str:
    """One line saying how to allow `names` (valid host names that only need
    an allow_domains entry): the whole resulting request to paste, or, when
    the request is unknown, the entries to add to the ones the notebook has."""
    if not names:
        return "No change to the notebook's metadata alone would allow them (see each host's fix)."
    extended = extend_request(meta, names)
    if extended is None:
        return f"Add to the notebook's awf.allow_domains (keep the entries it has): {json.dumps(names)}"
    source = meta["request"].get("source") if isinstance(meta["request"], dict) else None
    if source == "AWF_POLICY":
        return f"AWF_POLICY that would allow them (set by the launcher, not the notebook): {json.dumps(extended)}"
    return f"Metadata that would allow them (the notebook's whole awf entry): {json.dumps({'awf': extended})}"
