"""The broker's wire protocol. Pure: bytes in, a validated request out.

One connection carries one request and one response, each a single JSON
object on one line (UTF-8, ended by "\\n" or by the client closing its side).
A request is at most `MAX_REQUEST` bytes. The schema is strict: unknown keys,
wrong types, oversized values and duplicate keys are refused with a
`ProtocolError` naming the field, and nothing else is ever raised on any
input. Admin settings (mounts, uids, limits, admin allow lists, networks) are
not in the schema at all: the broker's own config decides them.

Requests (every one may carry `"v": 1`):

    {"op": "ping"}
    {"op": "start", "kernel_id": ID, "ports": {shell_port, iopub_port, stdin_port,
        hb_port, control_port}, "key": KEY, "signature_scheme": "hmac-sha256",
        "cwd": DIR, "notebook": PATH.ipynb | null, "policy": {allow_domains,
        block_domains, mode} | null, "kernel_cmd": [...] | null, "env": {...},
        "image": NAME | null, "server_paths": {deny_write, deny_read, if_present}}
    {"op": "status", "kernel_id": ID}          -> {"running": bool, "exit_code": int | null}
    {"op": "signal", "kernel_id": ID, "signal": 2 | 9 | 15}
    {"op": "stop", "kernel_id": ID}
    {"op": "list"}                             -> {"kernels": [...]}
    {"op": "logs", "kernel_id": ID, "limit": N} -> {"records": [...]}
    {"op": "gc"}                               -> {"removed": [...]}

Responses: {"ok": true, ...} or {"ok": false, "error": TEXT, "code": CODE,
"hint": TEXT | null}; see `error`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import PolicyError
from ..naming import valid_kernel_id
from ..policy import PolicyRequest, parse_request as parse_policy_request

VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 8 * 1024 * 1024
MAX_PATH = 4096
MAX_KEY = 256
MIN_KEY = 16
MAX_ENV = 32
MAX_ENV_VALUE = 4096
MAX_CMD = 64
MAX_ARG = 4096
MAX_IMAGE = 255
MAX_SERVER_PATHS = 256
MAX_LOG_RECORDS = 10000
DEFAULT_LOG_RECORDS = 1000

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
SIGNATURE_SCHEMES = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
SIGNALS = {2: "SIGINT", 9: "SIGKILL", 15: "SIGTERM"}
# The provisioner's env_allowlist defaults: the launcher's variables a kernel may get.
ENV_ALLOWLIST = ("LANG", "LC_*", "TZ", "JPY_SESSION_NAME")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")

# Fields of each op besides "op" and "v": name -> required.
FIELDS: dict[str, dict[str, bool]] = {
    "ping": {},
    "start": {"kernel_id": True, "ports": True, "key": True, "signature_scheme": False, "cwd": True,
              "notebook": False, "policy": False, "kernel_cmd": False, "env": False, "image": False,
              "server_paths": False},
    "status": {"kernel_id": True},
    "signal": {"kernel_id": True, "signal": True},
    "stop": {"kernel_id": True},
    "list": {},
    "logs": {"kernel_id": True, "limit": False},
    "gc": {},
    "policy": {"kernel_id": True, "policy": False},  # a running kernel's new request (live policy)
}
OPS = tuple(FIELDS)

# Admin settings someone may try to slip into a request: refused by name.
ADMIN_FIELDS = frozenset({
    "allow_domains", "block_domains", "domain_ceiling", "allow_record_mode", "extra_mounts", "mounts",
    "kernel_uid", "kernel_gid", "uid", "gid", "user", "mem_limit", "cpu_limit", "pids_limit",
    "read_only_image", "tmp_size", "deny_write", "deny_read", "egress_network", "dns_servers",
    "allow_private_destinations", "proxy_image", "allowed_images", "audit_dir", "startup_timeout",
    "cell_notices", "mount_workdir", "env_allowlist", "kernels_per_user", "notebook_roots", "privileged",
    "cap_add", "network", "network_mode", "owner", "owner_uid",
})


class ProtocolError(Exception):
    """A request the broker refuses before acting on it (the only exception
    `parse_request` raises)."""

    code = "bad-request"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class StartRequest:
    kernel_id: str
    ports: dict[str, int]
    key: str
    signature_scheme: str
    cwd: str
    notebook: str | None = None
    policy: PolicyRequest | None = None
    policy_json: dict | None = None          # the request as sent, for the record
    kernel_cmd: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    server_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    op: str
    kernel_id: str | None = None
    signal: int | None = None
    limit: int = DEFAULT_LOG_RECORDS
    start: StartRequest | None = None
    policy: PolicyRequest | None = None      # op "policy": the notebook's new request (None: none)


# --- decoding ----------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ProtocolError(f"duplicate key {_shown(key)}")
        out[key] = value
    return out


def _no_constants(name: str):
    raise ProtocolError(f"{name} is not JSON")


def _shown(value: Any, limit: int = 60) -> str:
    """A value as it may appear in an error message: repr, ASCII, shortened."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def decode(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("a request is bytes")
    if len(data) > MAX_REQUEST:
        raise ProtocolError(f"request is {len(data)} bytes; at most {MAX_REQUEST} are accepted")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request is not UTF-8") from None
    if not text.strip():
        raise ProtocolError("empty request")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"request is not one JSON object ({_shown(str(exc), 120)})") from None


# --- fields --------------------------------------------------------------------------------

def _str(obj: dict, name: str, *, max_len: int, min_len: int = 1) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise ProtocolError(f"{name}: must be a string, not {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        raise ProtocolError(f"{name}: must be {min_len}-{max_len} characters, not {len(value)}")
    if "\0" in value:
        raise ProtocolError(f"{name}: contains a NUL character")
    return value


def _int(obj: dict, name: str, low: int, high: int) -> int:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name}: must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"{name}: {value} is not in {low}..{high}")
    return value


def _path(obj: dict, name: str) -> str:
    value = _str(obj, name, max_len=MAX_PATH)
    if not value.startswith("/"):
        raise ProtocolError(f"{name}: {_shown(value)} must be an absolute path")
    if not value.isprintable():
        raise ProtocolError(f"{name}: {_shown(value)} contains control characters")
    return value


def _kernel_id(obj: dict) -> str:
    try:
        return valid_kernel_id(obj["kernel_id"])
    except ValueError as exc:
        raise ProtocolError(f"kernel_id: {exc}") from None


def _ports(obj: dict) -> dict[str, int]:
    ports = obj["ports"]
    if not isinstance(ports, dict):
        raise ProtocolError(f"ports: must be an object with {', '.join(PORT_NAMES)}")
    unknown = [k for k in ports if k not in PORT_NAMES]
    if unknown:
        raise ProtocolError(f"ports: unknown key {_shown(unknown[0])} (keys: {', '.join(PORT_NAMES)})")
    missing = [k for k in PORT_NAMES if k not in ports]
    if missing:
        raise ProtocolError(f"ports: {missing[0]} is missing")
    out = {name: _int(ports, name, 1024, 65535) for name in PORT_NAMES}
    if len(set(out.values())) != len(out):
        raise ProtocolError("ports: the five ports must be distinct")
    return out


def _key(obj: dict) -> str:
    value = _str(obj, "key", max_len=MAX_KEY, min_len=MIN_KEY)
    if not all("\x21" <= c <= "\x7e" for c in value):
        raise ProtocolError("key: printable ASCII without spaces only",
                            hint="let jupyter_client make the session key (a uuid4)")
    return value


def _signature_scheme(obj: dict) -> str:
    if "signature_scheme" not in obj:
        return SIGNATURE_SCHEMES[0]
    value = obj["signature_scheme"]
    if value not in SIGNATURE_SCHEMES or not isinstance(value, str):
        raise ProtocolError(f"signature_scheme: {_shown(value)} is not one of {', '.join(SIGNATURE_SCHEMES)}")
    return value


def _notebook(obj: dict) -> str | None:
    if obj.get("notebook") is None:
        return None
    value = _path(obj, "notebook")
    if not value.endswith(".ipynb"):
        raise ProtocolError(f"notebook: {_shown(value)} is not a .ipynb file")
    return value


def _policy(obj: dict) -> tuple[PolicyRequest | None, dict | None]:
    value = obj.get("policy")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise ProtocolError(f"policy: must be an object like {{\"allow_domains\": [...]}}, not {type(value).__name__}")
    try:
        return parse_policy_request(value, source="policy"), value
    except PolicyError as exc:
        raise ProtocolError(exc.message, hint=exc.hint) from None
    except (TypeError, ValueError, RecursionError, UnicodeError) as exc:  # belt and braces: never a crash
        raise ProtocolError(f"policy: invalid ({_shown(str(exc), 120)})") from None


def _kernel_cmd(obj: dict) -> tuple[str, ...] | None:
    value = obj.get("kernel_cmd")
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CMD:
        raise ProtocolError(f"kernel_cmd: must be a list of 1-{MAX_CMD} strings")
    return tuple(_str({"kernel_cmd[]": a}, "kernel_cmd[]", max_len=MAX_ARG) for a in value)


def _env(obj: dict) -> dict[str, str]:
    value = obj.get("env")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("env: must be an object of strings")
    if len(value) > MAX_ENV:
        raise ProtocolError(f"env: {len(value)} variables; at most {MAX_ENV}")
    out = {}
    for name, text in value.items():
        if not _ENV_NAME.fullmatch(name) or not any(fnmatch.fnmatchcase(name, p) for p in ENV_ALLOWLIST):
            raise ProtocolError(f"env: {_shown(name)} may not be passed to a kernel "
                                f"(allowed: {', '.join(ENV_ALLOWLIST)})")
        out[name] = _str({f"env.{name}": text}, f"env.{name}", max_len=MAX_ENV_VALUE, min_len=0)
    return out


def _image(obj: dict) -> str | None:
    if obj.get("image") is None:
        return None
    value = _str(obj, "image", max_len=MAX_IMAGE)
    if not _IMAGE.fullmatch(value):
        raise ProtocolError(f"image: {_shown(value)} is not an image name")
    return value


SERVER_PATH_KINDS = ("deny_write", "deny_read", "if_present")


def _server_paths(obj: dict) -> dict[str, tuple[str, ...]]:
    """Folders of the user's own Jupyter server a kernel must not change
    (awf_kernel.protect.ServerPaths): they can only add protection."""
    value = obj.get("server_paths")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"server_paths: must be an object with {', '.join(SERVER_PATH_KINDS)}")
    out = {}
    for kind, paths in value.items():
        if kind not in SERVER_PATH_KINDS:
            raise ProtocolError(f"server_paths: unknown key {_shown(kind)} (keys: {', '.join(SERVER_PATH_KINDS)})")
        if not isinstance(paths, list) or len(paths) > MAX_SERVER_PATHS:
            raise ProtocolError(f"server_paths.{kind}: must be a list of at most {MAX_SERVER_PATHS} paths")
        checked = []
        for p in paths:
            here = f"server_paths.{kind}[]"
            text = _path({here: p}, here)
            if ".." in text.split("/") or text.rstrip("/") == "":
                raise ProtocolError(f"{here}: {_shown(text)} must be an absolute folder below / without '..'")
            checked.append(text)
        out[kind] = tuple(checked)
    return out


def _check_keys(obj: dict, op: str) -> None:
    allowed = FIELDS[op]
    for key in obj:
        if key in ("op", "v") or key in allowed:
            continue
        if key in ADMIN_FIELDS:
            raise ProtocolError(f"{op}: {_shown(key)} is an admin setting and cannot be part of a request; "
                                "the broker's config decides it",
                                hint="ask the operator to change it in the broker's config (overrides)")
        raise ProtocolError(f"{op}: unknown field {_shown(key)} (fields: {', '.join(allowed) or 'none'})")
    for key, required in allowed.items():
        if required and key not in obj:
            raise ProtocolError(f"{op}: {key} is missing")


def parse_request(data: bytes) -> Request:
    """One request line -> a Request, or ProtocolError (and nothing else)."""
    obj = decode(data)
    if not isinstance(obj, dict):
        raise ProtocolError(f"a request is a JSON object, not {type(obj).__name__}")
    op = obj.get("op")
    if not isinstance(op, str) or op not in FIELDS:
        raise ProtocolError(f"op: {_shown(op)} is not one of {', '.join(OPS)}")
    if "v" in obj and (isinstance(obj["v"], bool) or obj["v"] != VERSION):
        raise ProtocolError(f"v: protocol version {_shown(obj['v'])} is not supported (this broker speaks {VERSION})")
    _check_keys(obj, op)
    if op == "start":
        return Request(op, kernel_id=_kernel_id(obj), start=_start(obj))
    kernel_id = _kernel_id(obj) if "kernel_id" in FIELDS[op] else None
    if op == "signal":
        signum = _int(obj, "signal", 1, 64)
        if signum not in SIGNALS:
            raise ProtocolError(f"signal: {signum} is not allowed (only "
                                + ", ".join(f"{n} ({name})" for n, name in SIGNALS.items()) + ")")
        return Request(op, kernel_id=kernel_id, signal=signum)
    if op == "logs":
        limit = _int(obj, "limit", 1, MAX_LOG_RECORDS) if "limit" in obj else DEFAULT_LOG_RECORDS
        return Request(op, kernel_id=kernel_id, limit=limit)
    if op == "policy":
        return Request(op, kernel_id=kernel_id, policy=_policy(obj)[0])
    return Request(op, kernel_id=kernel_id)


def _start(obj: dict) -> StartRequest:
    policy, policy_json = _policy(obj)
    return StartRequest(
        kernel_id=_kernel_id(obj), ports=_ports(obj), key=_key(obj),
        signature_scheme=_signature_scheme(obj), cwd=_path(obj, "cwd"), notebook=_notebook(obj),
        policy=policy, policy_json=policy_json, kernel_cmd=_kernel_cmd(obj), env=_env(obj),
        image=_image(obj), server_paths=_server_paths(obj))


# --- responses -------------------------------------------------------------------------------

def ok(**fields: Any) -> dict:
    return {"ok": True, **fields}


def error(message: str, code: str = "refused", hint: str | None = None) -> dict:
    """codes: bad-request (schema), refused (not allowed for this caller),
    no-such-kernel, limit (a per-user limit), busy (too many requests in
    flight), failed (the pod could not be made), internal."""
    return {"ok": False, "error": message, "code": code, "hint": hint}


def encode(obj: dict) -> bytes:
    """One line of ASCII JSON (non-ASCII escaped), for requests and responses."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode() + b"\n"
