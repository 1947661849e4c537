"""Egress policy: the domain grammar, notebook requests and the effective policy.

Pure functions only. Every host that reaches Squid's or the resolver's
configuration passed `parse_domain`, whose output alphabet is [a-z0-9.-]
(plus the `*.`/`.` prefixes in its canonical text): nothing that could
inject a directive survives it.

Grammar (stricter than AWF, where `github.com` also admits subdomains):
`example.com` exactly that host; `*.example.com` subdomains only;
`.example.com` both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import CeilingError, PolicyError
# The grammar's ASCII core (IP forms, labels) lives with the log reader that
# also runs inside the kernel, so both read a host alike.
from .kernel_side.awf_records import NUMERIC_LABEL, ascii_name, is_ip_literal

MAX_ENTRIES = 1000
REQUEST_KEYS = ("allow_domains", "block_domains", "mode")
MODES = ("enforce", "record")
# IDNA 2003 (Python's codec) maps these away ("ß" -> "ss") where IDNA 2008
# (browsers, requests) keeps them: the two would name different domains.
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")


@dataclass(frozen=True)
class DomainRule:
    host: str
    scope: str = "exact"

    def matches(self, host: str) -> bool:
        name = normalize_host(host)
        if name is None:
            return False
        if self.scope == "exact":
            return name == self.host
        sub = name.endswith("." + self.host)
        return sub or (self.scope == "both" and name == self.host)

    def __str__(self) -> str:
        return {"exact": "", "subdomains": "*.", "both": "."}[self.scope] + self.host


def _psl():
    from publicsuffixlist import PublicSuffixList

    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList(only_icann=True)
    return _PSL


_PSL = None


def _idna(host: str) -> str | None:
    if host.isascii():
        return host.lower()
    if _IDNA_DEVIATIONS.intersection(host):
        return None
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _canonical(host: str) -> str | None:
    """The host grammar itself; callers have already removed one trailing dot."""
    name = _idna(host)
    return ascii_name(name) if name else None


def normalize_host(host: str) -> str | None:
    """A runtime host name in canonical form, or None (IPs, invalid names)."""
    if not isinstance(host, str) or not host or is_ip_literal(host):
        return None
    return _canonical(host[:-1] if host.endswith(".") else host)


def _why_not_host(entry: str) -> str:
    body = entry[2:] if entry.startswith("*.") else entry[1:] if entry.startswith(".") else entry
    if any(c.isspace() for c in entry):
        return "whitespace is not allowed"
    if "://" in entry or "/" in entry:
        return "write the host name only, without a scheme or path"
    if ":" in entry and not entry.startswith("["):
        return "ports are not allowed; only ports 80 and 443 are ever reachable"
    if ".." in body or body.startswith("."):
        return "empty label ('..')"
    if "*" in body:
        return "'*' is allowed only as a leading '*.'"
    if _IDNA_DEVIATIONS.intersection(entry):
        return ("'\u00df', '\u03c2' and zero-width joiners are read differently by IDNA 2003 and 2008; "
                "write the xn-- form")
    if NUMERIC_LABEL.fullmatch(body.rstrip(".").rsplit(".", 1)[-1].lower()):
        return "a numeric last label makes URL parsers read it as an IP address"
    return "letters, digits, '-' and '.' only; labels 1-63 characters, not starting or ending with '-'"


def parse_domain(entry: Any, where: str) -> DomainRule:
    """One allow/block entry -> a rule, or a PolicyError naming the entry."""
    if not isinstance(entry, str):
        raise PolicyError(f"{where}: {entry!r} is not a string")
    text = entry
    if not text:
        raise PolicyError(f"{where}: empty entry")
    if text in ("*", ".", "*."):
        raise PolicyError(f"{where}: {entry!r} would allow everything; list the hosts instead")
    if text.startswith("*."):
        scope, host = "subdomains", text[2:]
    elif text.startswith("."):
        scope, host = "both", text[1:]
    else:
        scope, host = "exact", text
    if is_ip_literal(host) or is_ip_literal(text):
        raise PolicyError(f"{where}: {entry!r} is an IP address; only domain names can be allowed "
                          "(raw IP destinations are always denied)")
    if host.endswith("."):
        host = host[:-1]
    name = _canonical(host) if host.isprintable() else None
    if name is None or any(c in host for c in "\"'\\#;`$\x00") or host != host.strip():
        raise PolicyError(f"{where}: {entry!r} is not a host name ({_why_not_host(entry)})")
    if "." not in name or _psl().is_public(name):
        raise PolicyError(f"{where}: {entry!r} covers a whole top-level domain or public suffix; "
                          "name the registered domain (e.g. example.co.uk)")
    return DomainRule(name, scope)


def parse_domains(entries: Any, where: str, *, allow_presets: bool = True) -> tuple[DomainRule, ...]:
    if entries is None:
        return ()
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise PolicyError(f"{where}: must be a list of domain strings, not {type(entries).__name__}")
    if len(entries) > MAX_ENTRIES:
        raise PolicyError(f"{where}: {len(entries)} entries; at most {MAX_ENTRIES} are allowed")
    out: list[DomainRule] = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if allow_presets and isinstance(entry, str) and entry.startswith("@"):
            from .presets import expand

            try:
                names = expand(entry)
            except PolicyError as exc:
                raise PolicyError(f"{here}: {exc.message}", hint=exc.hint) from None
            out.extend(parse_domain(n, f"{here} ({entry})") for n in names)
        else:
            out.append(parse_domain(entry, here))
    return tuple(dict.fromkeys(out))


def covers(outer: DomainRule, inner: DomainRule) -> bool:
    """Every host `inner` matches is also matched by `outer`."""
    if outer.scope == "exact":
        return inner.scope == "exact" and inner.host == outer.host
    below = inner.host.endswith("." + outer.host)
    if outer.scope == "subdomains":
        return below or (inner.host == outer.host and inner.scope == "subdomains")
    return below or inner.host == outer.host


@dataclass(frozen=True)
class PolicyRequest:
    allow: tuple[DomainRule, ...] = ()
    block: tuple[DomainRule, ...] = ()
    mode: str | None = None
    source: str = ""
    # The lists as the notebook wrote them (presets unexpanded): what a
    # suggestion to allow one more host extends, so pasting it keeps the rest.
    allow_written: tuple[str, ...] = ()
    block_written: tuple[str, ...] = ()

    def written(self) -> dict:
        """The request's lists as written, and where it came from (policy.json's `request`)."""
        return {"allow_domains": list(self.allow_written), "block_domains": list(self.block_written),
                "source": self.source}


def parse_request(obj: Any, source: str) -> PolicyRequest:
    """The `awf` metadata object (or AWF_POLICY's JSON) -> a request."""
    if not isinstance(obj, dict):
        raise PolicyError(f"{source}: must be a JSON object like "
                          '{"allow_domains": ["example.com"]}, not ' + type(obj).__name__)
    unknown = [k for k in obj if k not in REQUEST_KEYS]
    if unknown:
        raise PolicyError(f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(REQUEST_KEYS)}")
    mode = obj.get("mode")
    if mode is not None and mode not in MODES:
        raise PolicyError(f"{source}.mode: {mode!r} is not one of {', '.join(MODES)}")
    allow = parse_domains(obj.get("allow_domains"), f"{source}.allow_domains")
    block = parse_domains(obj.get("block_domains"), f"{source}.block_domains")
    return PolicyRequest(allow=allow, block=block, mode=mode, source=source,
                         allow_written=tuple(obj.get("allow_domains") or ()),
                         block_written=tuple(obj.get("block_domains") or ()))


def parse_request_json(text: str, source: str) -> PolicyRequest:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{source}: not valid JSON ({exc})") from None
    return parse_request(obj, source)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # allowed | not-allowed | blocked | raw-ip | invalid-host
    rule: DomainRule | None = None

    def explain(self, host: str) -> str:
        """One line a user can act on; a hostile host name cannot add lines."""
        name = normalize_host(host)
        shown = host if isinstance(host, str) and host.isprintable() else repr(host)
        if self.reason == "allowed":
            return f"{shown} is allowed by {self.rule or 'record mode'}"
        if self.reason == "blocked":
            return f"{shown} is blocked by the block list entry {self.rule}"
        if self.reason == "raw-ip":
            return f"{shown} is an IP address; only names can be allowed (raw IP destinations are denied)"
        if self.reason == "invalid-host":
            return f"{host!r} is not a valid host name"
        return f'{shown} is not in the allowlist; add "{name or shown}" to the notebook\'s awf.allow_domains'


@dataclass(frozen=True)
class Policy:
    allow: tuple[DomainRule, ...] = ()
    block: tuple[DomainRule, ...] = ()
    mode: str = "enforce"
    allow_all: bool = False  # record mode without a ceiling: everything not blocked

    def decide(self, host: str) -> Decision:
        """Deny wins: a block rule beats any allow rule, whoever set either."""
        if is_ip_literal(host):
            return Decision(False, "raw-ip")
        name = normalize_host(host)
        if name is None:
            return Decision(False, "invalid-host")
        for rule in self.block:
            if rule.matches(name):
                return Decision(False, "blocked", rule)
        for rule in self.allow:
            if rule.matches(name):
                return Decision(True, "allowed", rule)
        if self.allow_all:
            return Decision(True, "allowed", None)
        return Decision(False, "not-allowed")

    def to_json(self) -> dict:
        return {"allow_domains": [str(r) for r in self.allow],
                "block_domains": [str(r) for r in self.block],
                "mode": self.mode}


def widens(old: Policy, new: Policy) -> bool:
    """Every host `old` admits, `new` admits too: each old allow rule is
    covered by a new one, and the block rules and mode are the same. A restart
    that only widens may start the kernel while the new policy goes in force
    (the old one is never wider than what the notebook now asks for)."""
    return (new.mode == old.mode and set(new.block) == set(old.block)
            and (new.allow_all or not old.allow_all)
            and all(any(covers(n, o) for n in new.allow) for o in old.allow))


def resolve_policy(*, admin_allow: tuple[DomainRule, ...] = (), admin_block: tuple[DomainRule, ...] = (),
                   ceiling: tuple[DomainRule, ...] | None = None, request: PolicyRequest | None = None,
                   record_allowed: bool = True) -> Policy:
    """(admin allow ∪ (request ∩ ceiling)) minus (admin block ∪ request block).

    A request outside the ceiling is an error, not a silent narrowing: a
    notebook that quietly lost a domain would fail later and obscurely.
    """
    request = request or PolicyRequest()
    for rule in request.allow:
        if ceiling is not None and not any(covers(c, rule) for c in ceiling):
            raise CeilingError(
                f"{request.source or 'the notebook'} asks for '{rule}', which is outside the admin's "
                "domain_ceiling",
                hint=f"ask the admin to add it to AWFProvisioner.domain_ceiling, or remove '{rule}' "
                     "from the notebook's awf.allow_domains")
    mode = request.mode or "enforce"
    if mode == "record" and not record_allowed:
        raise PolicyError(f"{request.source}: record mode is disabled by the admin "
                          "(AWFProvisioner.allow_record_mode)")
    allow = tuple(dict.fromkeys(admin_allow + request.allow))
    allow_all = False
    if mode == "record":
        # everything the admin bounds permit: the ceiling, or with no ceiling everything
        allow = tuple(dict.fromkeys(allow + (ceiling or ())))
        allow_all = ceiling is None
    block = tuple(dict.fromkeys(admin_block + request.block))
    return Policy(allow=allow, block=block, mode=mode, allow_all=allow_all)
