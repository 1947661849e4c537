"""squid.conf for one pod, rendered from the effective policy.

Hosts reach this text only after awf_kernel.policy validated them against the
host grammar ([a-z0-9.-]), so no entry can inject a directive; each is still
escaped for the regex it lands in.
"""

from __future__ import annotations

import re

from .. import addresses
from ..policy import DomainRule, Policy
from . import ports

# A regex that cannot match a host name: Squid rejects an ACL with no values.
_NEVER = r"^awf-empty-acl\.invalid$"

ERROR_PAGE = "ERR_AWF_DENIED"


def host_regex(rule: DomainRule) -> str:
    """Anchored regex for one rule; a trailing dot in the request is tolerated."""
    host = re.escape(rule.host)
    if rule.scope == "exact":
        return rf"^{host}\.?$"
    if rule.scope == "subdomains":
        return rf"\.{host}\.?$"
    return rf"(^|\.){host}\.?$"


def _acl(name: str, kind: str, rules: tuple[DomainRule, ...]) -> list[str]:
    values = [host_regex(r) for r in rules] or [_NEVER]
    return [f"acl {name} {kind} -i {v}" for v in values]


# One JSON object per line. Every value that a client can influence goes
# through Squid's URL encoding (%#), whose output cannot break out of a JSON
# string; awf_kernel.audit decodes it.
ACCESS_LOG = "/var/log/awf/access.jsonl"
LOG_FIELDS = {
    "time": "%ts.%03tu", "client": "%>a", "squid_port": "%>lp", "method": "%#rm",
    "host": "%#>rd", "url": "%#>ru", "server_port": "%<p", "sni": "%#ssl::>sni",
    "squid_status": "%Ss", "status": "%>Hs", "bytes": "%st", "bump": "%ssl::bump_mode",
    "server_addr": "%<a",  # the address Squid itself connected to ("-": none)
}


def render_logformat(kernel_id: str, notebook: str | None = None) -> str:
    fields = ['"kind":"proxy"', f'"kernel_id":"{_json_safe(kernel_id)}"',
              f'"notebook":{_json_constant(notebook)}']
    fields += [f'"{k}":"{v}"' for k, v in LOG_FIELDS.items()]
    return "{" + ",".join(fields) + "}"


def _json_safe(text: str) -> str:
    """Constant text inside a logformat: no JSON or Squid metacharacters survive."""
    return "".join(c for c in text if c.isalnum() or c in "-_.")


def _json_constant(value: str | None) -> str:
    """A JSON string as literal logformat text. Only plain path characters are
    kept (others become '_'): Squid gives '%' and '\\' meanings of its own.
    The exact path is in the kernel's policy.json."""
    if value is None:
        return "null"
    return '"' + "".join(c if c.isalnum() or c in "/._-+@ " else "_" for c in value) + '"'



def render_squid_conf(policy: Policy, *, kernel_id: str, notebook: str | None = None,
                      allowed_private: list[str] | tuple[str, ...] = ()) -> str:
    """The whole squid.conf. Order of http_access lines is the security policy:
    block lists, raw IPs and destinations that are not globally routable (an
    allowed name may resolve anywhere) are denied before anything is allowed.
    `allowed_private` are the admin's intranet ranges (already validated)."""
    allow_all = policy.mode == "record" and getattr(policy, "allow_all", False)
    lines = [
        f"# awf-kernel pod proxy for kernel {kernel_id}; generated, do not edit",
        "visible_hostname awf-proxy",
        "pid_filename /run/awf/squid.pid",
        "cache_log stdio:/dev/stderr",
        "logfile_rotate 5",
        "cache deny all",
        "cache_mem 4 MB",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        "dns_nameservers 127.0.0.1",
        "forwarded_for delete",
        "via off",
        "httpd_suppress_version_string on",
        # Never trust the client's idea of where a host lives: Squid resolves the
        # name itself and refuses a Host/SNI that does not match the real address.
        "host_verify_strict on",
        "client_dst_passthru off",
        "error_directory /etc/awf-proxy/errors",
        # The explicit port does not bump, so a denied CONNECT gets a plain 403.
        # Its tunnels leave with a TOS mark that the firewall redirects into the
        # HTTPS intercept port: the SNI inside a CONNECT is checked there.
        f"http_port 127.0.0.1:{ports.SQUID_EXPLICIT} name=explicit",
        f"http_port 127.0.0.1:{ports.SQUID_HTTP_INTERCEPT} name=http_intercept intercept",
        f"https_port 127.0.0.1:{ports.SQUID_HTTPS_INTERCEPT} name=https_intercept intercept ssl-bump"
        " cert=/etc/awf-proxy/cert.pem key=/etc/awf-proxy/key.pem generate-host-certificates=off",
        # The same three on the kernel's link, when it has one (routed pods; the
        # proxy's entrypoint writes the file, with no port otherwise).
        "include /run/awf/listen-link.conf",
        "",
        "acl step1 at_step SslBump1",
        "acl step2 at_step SslBump2",
        "acl CONNECT method CONNECT",
        "acl https_port port 443",
        "acl web_ports port " + " ".join(str(p) for p in ports.WEB_PORTS),
        "acl https_intercept myportname https_intercept https_intercept_link",
        "acl explicit myportname explicit explicit_link",
        "acl to_linklocal dst 169.254.0.0/16",
        # Checked after Squid's own DNS lookup, for names and intercepted IPs alike.
        "acl to_non_global dst " + " ".join(addresses.NON_GLOBAL_V4),
        "acl to_allowed_private dst " + (" ".join(allowed_private) if allowed_private else "255.255.255.255/32"),
        r"acl raw_ip dstdom_regex -n ^[0-9.]+$ ^\[ ^[0-9a-f:]+$",
        r"acl raw_ip_sni ssl::server_name_regex ^[0-9.]+$ ^\[ ^[0-9a-f:]+$",
        *_acl("awf_block", "dstdom_regex -n", policy.block),
        *_acl("awf_allow", "dstdom_regex -n", policy.allow),
        *_acl("awf_block_sni", "ssl::server_name_regex", policy.block),
        *_acl("awf_allow_sni", "ssl::server_name_regex", policy.allow),
        "",
        f"tcp_outgoing_tos {ports.CONNECT_TOS:#04x} explicit CONNECT",
        "http_access deny !web_ports",
        "http_access deny CONNECT !https_port",
        "http_access deny to_localhost",
        "http_access deny to_linklocal",
        "http_access deny to_non_global !to_allowed_private",
        # Intercepted TLS arrives as a CONNECT to an IP; it is judged by SNI below.
        "http_access allow CONNECT https_intercept",
        "http_access deny awf_block",
        "http_access deny raw_ip",
        "http_access allow all" if allow_all else "http_access allow awf_allow",
        "http_access deny all",
        # Squid picks the page by the last ACL of the matching deny line.
        "deny_info ERR_AWF_BLOCKED awf_block",
        *(f"deny_info ERR_AWF_ADDRESS {acl}" for acl in ("web_ports", "https_port", "raw_ip", "to_localhost",
                                                          "to_linklocal", "to_allowed_private")),
        f"deny_info {ERROR_PAGE} all",
        # The denial names the host and the fix in headers too, for clients that
        # never show a body (and for LLM agents reading responses).
        "acl awf_error rep_header X-Squid-Error ^ERR_AWF_",
        "acl awf_not_allowed rep_header X-Squid-Error ^ERR_AWF_DENIED",
        "acl awf_blocked rep_header X-Squid-Error ^ERR_AWF_BLOCKED",
        "acl awf_address rep_header X-Squid-Error ^ERR_AWF_ADDRESS",
        'reply_header_add X-AWF-Blocked-Host "%>rd" awf_error',
        'reply_header_add X-AWF-Fix "add %>rd to the notebook metadata awf.allow_domains" awf_not_allowed',
        'reply_header_add X-AWF-Fix "%>rd matches a block list entry (notebook awf.block_domains or the admin\'s'
        ' block_domains); remove it there" awf_blocked',
        'reply_header_add X-AWF-Fix "only allowed host names on ports 80 and 443 are reachable; use a name from'
        ' the notebook metadata awf.allow_domains" awf_address',
        "",
        "ssl_bump peek step1",
        "ssl_bump terminate awf_block_sni",
        "ssl_bump terminate raw_ip_sni",
        "ssl_bump splice all" if allow_all else "ssl_bump splice awf_allow_sni",
        "ssl_bump terminate all",
        "",
        "buffered_logs off",
        "umask 022",  # the kernel reads its own pod's log (read-only mount) for cell notices
        f"logformat awf {render_logformat(kernel_id, notebook)}",
        f"access_log stdio:{ACCESS_LOG} awf",
        "",
    ]
    return "\n".join(lines)
