"""Hostile names in the audit trail: nothing the kernel chose can forge a line,
steer a summary or be suggested as an allow_domains entry unless it is one.

The kernel picks Host headers, SNI values, CONNECT targets and DNS names. Squid
URL-encodes them in its log (%#) and the resolver writes JSON; both decode to
arbitrary text in awf_kernel.audit. These tests feed such lines to `awf-kernel
logs` (text, --json, --summary) and to the kernel-side notice.
"""

from __future__ import annotations

import html
import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awf_kernel import audit
from awf_kernel.cli import main
from awf_kernel.kernel_side import awf_notice
from awf_kernel.policy import normalize_host
from awf_kernel.render.squid import LOG_FIELDS

KID = "4bfe02e6-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
C0 = "".join(map(chr, range(0x20)))
C1 = "".join(map(chr, range(0x80, 0xA0)))
ESCAPES = ["\x1b[2K\r", "\x1b[1A", "\x1b[31m", "\x1b]8;;https://pypi.org\x1b\\pypi.org\x1b]8;;\x1b\\",
           "\x1b]0;title\x07", "\x9b2J", "\x1bc", "\x08\x08\x08"]

# Hosts an attacker would pick, each with what the admin must not be fooled into.
HOSTILE = [
    "x\n12:00:00 allowed http  GET pypi.org:80 (allowed, rule pypi.org)",  # a forged line
    "evil.test\r12:00:00 allowed",                                        # overwrite the line
    "evil.test\x1b[2K\x1b[1Apypi.org",                                    # erase and move up
    "\x1b]8;;https://pypi.org/\x1b\\evil.test\x1b]8;;\x1b\\",             # OSC 8 hyperlink
    "gro.ipyp\u202eevil.test",                                             # bidi override
    "pyp\u0456.org",                                                      # a Cyrillic look-alike
    "py\u200bpi.org",                                                     # zero-width space
    "<script>alert(\"x\")</script>.test",                                  # HTML
    "a\x00b\x7f\x85c\u2028d.test",                                        # NUL, DEL, NEL, line separator
]


def _control_free(text: str) -> bool:
    """Printable ASCII and newlines only."""
    return all(c == "\n" or 0x20 <= ord(c) < 0x7F for c in text)


def squid_line(host, *, method="GET", sni=None, squid_status="TCP_DENIED", status="403", squid_port="3129",
               bump=None, server_addr=None, url=None, t=1795884099.0) -> str:
    """A line as Squid writes it with our logformat: every client-influenced
    value URL-encoded (%#), the rest Squid's own."""
    def enc(value):
        return "-" if value is None else urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")
    fields = {"kind": "proxy", "kernel_id": KID, "notebook": None, "time": f"{t:.3f}", "client": "127.0.0.1",
              "squid_port": squid_port, "method": enc(method), "host": enc(host),
              "url": enc(url or f"http://{host}/"), "server_port": "80" if server_addr else "-", "sni": enc(sni),
              "squid_status": squid_status, "status": status, "bytes": "3529", "bump": bump or "-",
              "server_addr": server_addr or "-"}
    return json.dumps(fields)


def dns_line(host, decision="denied", t=1795884098.0) -> str:
    """As the resolver writes it: json.dumps, so raw control characters are \\u escapes."""
    return json.dumps({"time": t, "kind": "dns", "kernel_id": KID, "notebook": None, "port": 53, "host": host,
                       "qtype": 1, "decision": decision, "reason": "not-allowed", "rule": None})


@pytest.fixture
def trail(tmp_path):
    """An audit dir with one kernel whose logs are full of hostile names."""
    folder = tmp_path / KID
    folder.mkdir()
    (folder / "policy.json").write_text(json.dumps({
        "kernel_id": KID, "notebook": "/home/me/a\x1b[31mb.ipynb",
        "policy": {"allow_domains": ["pypi.org", "allowed.test"], "block_domains": [], "mode": "enforce"}}))
    access = [squid_line("pypi.org", squid_status="TCP_MISS", status="200", server_addr="192.0.2.7"),
              squid_line("blocked.test")]
    access += [squid_line(h) for h in HOSTILE]
    access += [squid_line("203.0.113.9", sni=h, squid_port="3130", squid_status="NONE_NONE", status="0",
                          bump="terminate", method="CONNECT", url="203.0.113.9:443") for h in HOSTILE[:3]]
    access.append(squid_line("allowed.test", method="GET\x1b[2J\nX", squid_status="TCP_MISS", status="200",
                             server_addr="192.0.2.8"))
    dns = [dns_line(h) for h in HOSTILE] + [dns_line("pypi.org", "allowed"), dns_line("blocked.test")]
    dns.append(dns_line("pypi.org\n", decision="allowed\nforged"))  # a decision is only ever the plain word
    (folder / "access.jsonl").write_text("\n".join(access) + "\n")
    (folder / "dns.jsonl").write_text("\n".join(dns) + "\n")
    return tmp_path, len(access) + len(dns)


# --- the one "safe to print" function ----------------------------------------------------------


SPECIALS = C0 + "\x7f" + C1 + BIDI + ZERO_WIDTH + "\\\u2028\u2029\ud800\U0001f600"
hostile_text = st.lists(st.one_of(st.sampled_from(list(SPECIALS)), st.sampled_from(ESCAPES), st.text(max_size=8)),
                        max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(hostile_text)
def test_the_notice_and_the_cli_escape_alike(text):
    out = audit.safe_text(text)
    assert out == awf_notice.safe_text(text)
    assert all(0x20 <= ord(c) < 0x7F for c in out)
    assert audit.safe_text(out) == out  # idempotent: escaping twice changes nothing
    if text.isascii() and text.isprintable():
        assert out == text


def test_every_control_becomes_a_visible_escape():
    for ch in C0 + "\x7f" + C1 + BIDI + ZERO_WIDTH:
        for fn in (audit.safe_text, awf_notice.safe_text):
            out = fn("a" + ch + "b")
            assert out.startswith("a\\") and out.endswith("b") and len(out) > 3, repr(ch)
    assert audit.safe_text("\x1b[31m") == "\\x1b[31m"
    assert audit.safe_text("\u202e") == "\\u202e"
    assert audit.safe_text("\U0001f600") == "\\U0001f600"
    assert audit.safe_text("pypi.org") == "pypi.org"


@settings(max_examples=300, deadline=None)
@given(st.one_of(hostile_text, st.from_regex(r"[A-Za-z0-9.-]{1,30}\.?", fullmatch=True)))
def test_the_notice_never_calls_a_name_valid_that_the_policy_refuses(text):
    name = awf_notice.host_name(text)
    if name is not None:
        assert normalize_host(text) == name


# --- awf-kernel logs -------------------------------------------------------------------------


def _run(capsys, *argv) -> str:
    assert main(["logs", *argv]) == 0
    out = capsys.readouterr().out
    assert _control_free(out), [c for c in out if not _control_free(c)]
    return out


def test_text_output_has_one_line_per_entry(trail, capsys):
    base, n = trail
    out = _run(capsys, KID, "--audit-dir", str(base))
    lines = out.splitlines()
    assert len(lines) == n
    assert not any(line.startswith("12:00:00 allowed") for line in lines)  # the forged line stays inside its own
    assert "\\x0a12:00:00 allowed http" in out and "\\x1b[2K" in out and "\\u202e" in out
    assert "pyp\\u0456.org" in out and "py\\u200bpi.org" in out
    forged = [line for line in lines if "12:00:00 allowed http" in line]
    assert forged and all(" denied " in line and "[not a valid host name" in line for line in forged)
    assert any("server_addr=192.0.2.7" in line and "pypi.org" in line for line in lines)


def test_json_output_is_one_valid_object_per_entry(trail, capsys):
    base, n = trail
    out = _run(capsys, KID, "--audit-dir", str(base), "--json")
    lines = out.splitlines()
    recs = [json.loads(line) for line in lines]
    assert len(recs) == n
    for rec in recs:
        for value in rec.values():
            assert not isinstance(value, str) or all(0x20 <= ord(c) < 0x7F for c in value), rec
    assert {r["server_addr"] for r in recs if r["host"] == "pypi.org" and r["kind"] == "http"} == {"192.0.2.7"}
    assert all("server_addr" in r for r in recs)
    assert [r["decision"] for r in recs if r["host"] == "pypi.org\\x0a"] == ["denied"]
    assert any(r["method"] == "GET\\x1b[2J\\x0aX" for r in recs)
    assert all(r["notebook"] == "/home/me/a\\x1b[31mb.ipynb" for r in recs)


def test_summary_cannot_be_steered(trail, capsys):
    base, _ = trail
    s = json.loads(_run(capsys, KID, "--audit-dir", str(base), "--summary", "--json"))
    # counts come from each record's own decision, keyed by the escaped host
    assert s["allowed"] == {"pypi.org": 2, "allowed.test": 1}
    assert s["denied"]["blocked.test"] == 2 and "pypi.org" not in s["denied"]
    for host in HOSTILE:
        assert audit.safe_text(host) in s["denied"] and audit.safe_text(host) not in s["allowed"]
        assert audit.safe_text(host) in s["not_allowable"]
    assert s["allow_domains"] == ["allowed.test", "blocked.test", "pypi.org"]  # only valid names, never a hostile one
    assert all(normalize_host(h) == h for h in s["allow_domains"])

    text = _run(capsys, KID, "--audit-dir", str(base), "--summary")
    lines = text.splitlines()
    table = lines[1:lines.index("")]
    assert len(table) == len(set(s["allowed"]) | set(s["denied"]))  # one row per host, no forged rows
    pypi = [line for line in table if line.startswith("pypi.org ")]
    assert len(pypi) == 1 and pypi[0].split()[1:] == ["2", "0"]
    assert all("[not a valid host name" in line for line in table if "\\" in line)
    pasted = json.loads("\n".join(lines[lines.index("paste into the notebook's metadata to allow every host seen:") + 1:
                                         lines.index("seen, but no allow_domains entry can allow them:") - 1]))
    assert pasted == {"awf": {"allow_domains": ["allowed.test", "blocked.test", "pypi.org"]}}


def test_follow_and_summary_share_the_records(trail):
    base, n = trail
    recs = audit.records(str(base), KID[:8])
    assert len(recs) == n
    assert all(_control_free(audit.format_record(r)) and "\n" not in audit.format_record(r) for r in recs)
    # a record that never went through the reader (a library caller's own) is escaped at print time too
    raw = {"time": 0, "decision": "allowed\n", "kind": "http", "method": "GET", "host": "a\nb", "port": 80,
           "reason": "x\x1b", "rule": "\u202e", "server_addr": "\r"}
    assert "\n" not in audit.format_record(raw) and _control_free(audit.format_record(raw))


def test_hosts_suggested_only_when_valid():
    assert audit.allow_entry("PyPI.org.") == "pypi.org"
    for bad in HOSTILE + ["192.0.2.1", "com", "co.uk", "a..b", "-a.test", "x.123"]:
        shown = audit.safe_text(bad)  # records carry escaped hosts: a look-alike never turns into punycode
        assert audit.allow_entry(shown) is None and audit.why_not_allowable(shown), bad


# --- kernel ids that are not ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "a\x00b", "x" * 65, "4bfe\n", "\u202e4bfe"])
def test_logs_refuses_a_kernel_id_that_is_not_one(trail, capsys, bad):
    base, _ = trail
    assert main(["logs", bad, "--audit-dir", str(base)]) == 2
    err = capsys.readouterr().err
    assert "invalid kernel id" in err and _control_free(err)


def test_folders_that_are_not_kernel_ids_are_skipped(trail):
    base, _ = trail
    (base / "not a kernel").mkdir()
    (base / "x.y").mkdir()
    assert [p.name for p in audit.kernels(str(base))] == [KID]
    assert audit.find_kernel(str(base), None).name == KID


def test_squid_logs_the_address_it_connected_to():
    assert LOG_FIELDS["server_addr"] == "%<a"


# --- the kernel-side notice ----------------------------------------------------------------------------


@pytest.fixture
def notice(trail):
    base, _ = trail
    n = awf_notice.Notice(shell=None, audit_dir=str(base / KID))
    n.offsets = {"access.jsonl": 0, "dns.jsonl": 0}
    return n


def test_notice_escapes_text_html_and_json(notice):
    found = notice.denials()
    bundle = notice.render(found)
    plain, page = bundle["text/plain"], bundle["text/html"]
    assert _control_free(plain) and _control_free(page)
    assert len(plain.splitlines()) == len(found) + 2  # title, one line per host, metadata: nothing forged
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "\\x1b]8;;" in page and "\\u202e" in page
    blob = json.dumps(bundle[awf_notice.MIME], ensure_ascii=False)
    assert _control_free(blob)
    assert bundle[awf_notice.MIME]["notebook"] == "/home/me/a\\x1b[31mb.ipynb"
    hosts = {d["host"]: d for d in found}
    for host in HOSTILE:
        shown = audit.safe_text(host)
        assert shown in hosts and hosts[shown]["valid_name"] is False, shown
        assert "not a valid host name" in hosts[shown]["reason"] and "allow_domains\": [" not in hosts[shown]["fix"]
        assert html.escape(shown) in page


def test_notice_never_proposes_an_invalid_host(notice):
    found = notice.denials()
    plain = notice.render(found)["text/plain"]
    line = [x for x in plain.splitlines() if x.startswith("Metadata that would allow them: ")]
    assert len(line) == 1
    entries = json.loads(line[0].split(": ", 1)[1])["awf"]["allow_domains"]
    assert entries == ["blocked.test"]
    assert '"allow_domains": [..., "blocked.test"]' in {d["host"]: d for d in found}["blocked.test"]["fix"]


def test_notice_and_cli_agree_on_the_hosts(notice, trail):
    base, _ = trail
    from_notice = {d["host"] for d in notice.denials()}
    from_cli = {audit.display_host(r) for r in audit.records(str(base), KID) if r["decision"] == "denied"}
    assert from_notice == from_cli


@settings(max_examples=60, deadline=None)
@given(st.lists(hostile_text.filter(bool), min_size=1, max_size=6))
def test_no_host_can_add_a_line(tmp_path_factory, hosts):
    base = tmp_path_factory.mktemp("audit")
    folder = base / KID
    folder.mkdir()
    (folder / "access.jsonl").write_text("".join(squid_line(h) + "\n" for h in hosts))
    (folder / "dns.jsonl").write_text("".join(dns_line(h) + "\n" for h in hosts))
    recs = audit.read_kernel(folder)
    assert len(recs) == 2 * len(hosts)
    text = "\n".join(audit.format_record(r) for r in recs)
    assert _control_free(text) and len(text.splitlines()) == len(recs)
    summary = audit.summary(recs)
    assert sum(summary["denied"].values()) == len(recs) and not summary["allowed"]
    assert all(normalize_host(h) == h for h in summary["allow_domains"])
    shown = audit.format_summary(summary)
    assert _control_free(shown)
    n = awf_notice.Notice(shell=None, audit_dir=str(folder))
    n.offsets = {"access.jsonl": 0, "dns.jsonl": 0}
    found = n.denials()
    plain = n.render(found)["text/plain"]
    assert _control_free(plain) and len(plain.splitlines()) == len(found) + 2
