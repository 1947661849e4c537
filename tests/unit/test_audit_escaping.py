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
    assert awf_notice.safe_text is audit.safe_text  # one function, in kernel_side/awf_records.py
    out = audit.safe_text(text)
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


@pytest.mark.parametrize("name", ["2.253.254.169.in-addr.arpa", "2.253.254.169.in-addr.arpa.",
                                  "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa"])
def test_a_reverse_lookup_is_never_suggested(name):
    """A kernel under gVisor's own network stack asks who its link address is;
    no allow_domains entry would let it reach a host by that name."""
    assert awf_notice.host_name(name) is None
    assert audit.allow_entry(name) is None
    assert awf_notice.host_name("in-addr.arpa.example.org") == "in-addr.arpa.example.org"


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
    assert s["add"] == ["blocked.test"]  # only valid names, never a hostile one, only what is missing
    assert s["request"] is None  # this trail does not record the notebook's request: say "add"

    text = _run(capsys, KID, "--audit-dir", str(base), "--summary")
    lines = text.splitlines()
    table = lines[1:lines.index("")]
    assert len(table) == len(set(s["allowed"]) | set(s["denied"]))  # one row per host, no forged rows
    pypi = [line for line in table if line.startswith("pypi.org ")]
    assert len(pypi) == 1 and pypi[0].split()[1:] == ["2", "0"]
    assert all("[not a valid host name" in line for line in table if "\\" in line)
    add = [line for line in lines if line.startswith("Add to the notebook's awf.allow_domains (keep the entries")]
    assert len(add) == 1 and json.loads(add[0].split(": ", 1)[1]) == ["blocked.test"]


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
    line = [x for x in plain.splitlines() if x.startswith("Add to the notebook's awf.allow_domains")]
    assert len(line) == 1
    entries = json.loads(line[0].split(": ", 1)[1])
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
    assert all(normalize_host(h) == h for h in summary["add"])
    shown = audit.format_summary(summary)
    assert _control_free(shown)
    n = awf_notice.Notice(shell=None, audit_dir=str(folder))
    n.offsets = {"access.jsonl": 0, "dns.jsonl": 0}
    found = n.denials()
    plain = n.render(found)["text/plain"]
    assert _control_free(plain) and len(plain.splitlines()) == len(found) + 2


# --- what to paste: the notebook's whole request, never a list that replaces it ----------------------------


def _trail_with(tmp_path, meta: dict, access=(), dns=()):
    folder = tmp_path / KID
    folder.mkdir(parents=True)
    (folder / "policy.json").write_text(json.dumps({"kernel_id": KID, "notebook": "/home/me/n.ipynb", **meta}))
    (folder / "access.jsonl").write_text("".join(line + "\n" for line in access))
    (folder / "dns.jsonl").write_text("".join(line + "\n" for line in dns))
    notice = awf_notice.Notice(shell=None, audit_dir=str(folder))
    notice.offsets = {"access.jsonl": 0, "dns.jsonl": 0}
    return folder, notice


NOTEBOOK_REQUEST = {"allow_domains": ["@pypi", "allowed.test"], "block_domains": ["bad.allowed.test"],
                    "source": "notebook /home/me/n.ipynb metadata awf"}
POLICY = {"allow_domains": ["admin.test", "pypi.org", "files.pythonhosted.org", "allowed.test"],
          "block_domains": ["bad.allowed.test"], "mode": "enforce", "allow_all": False}


def _suggested(plain: str) -> str:
    return plain.splitlines()[-1]


def test_the_suggestion_extends_the_notebooks_own_request(tmp_path, capsys):
    folder, notice = _trail_with(tmp_path, {"policy": POLICY, "ceiling": None, "request": NOTEBOOK_REQUEST},
                                 access=[squid_line("blocked.test"), squid_line("bad.allowed.test"),
                                         squid_line("other.test", squid_port="3130", status="0", bump="terminate",
                                                    method="CONNECT", url="192.0.2.1:443", squid_status="NONE_NONE")],
                                 dns=[dns_line("blocked.test"), dns_line("admin.test", "allowed")])
    found = {d["host"]: d for d in notice.denials()}
    assert found["blocked.test"]["addable"] and found["other.test"]["addable"]
    assert not found["bad.allowed.test"]["addable"] and "block list" in found["bad.allowed.test"]["reason"]
    line = _suggested(notice.render(list(found.values()))["text/plain"])
    label, snippet = line.split(": ", 1)
    assert label == "Metadata that would allow them (the notebook's whole awf entry)"
    # pasted as shown, the notebook keeps its preset, its own host and its block list; admin hosts are not copied in
    assert json.loads(snippet) == {"awf": {"allow_domains": ["@pypi", "allowed.test", "blocked.test", "other.test"],
                                           "block_domains": ["bad.allowed.test"]}}

    assert main(["logs", KID, "--audit-dir", str(tmp_path), "--summary", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["add"] == ["blocked.test", "other.test"]
    assert s["request"] == json.loads(snippet)["awf"]
    assert main(["logs", KID, "--audit-dir", str(tmp_path), "--summary"]) == 0
    assert line in capsys.readouterr().out.splitlines()


def test_no_request_and_a_launchers_request(tmp_path):
    _, notice = _trail_with(tmp_path, {"policy": POLICY, "ceiling": None, "request": None},
                            dns=[dns_line("blocked.test")])
    line = _suggested(notice.render(notice.denials())["text/plain"])
    assert json.loads(line.split(": ", 1)[1]) == {"awf": {"allow_domains": ["blocked.test"]}}

    launcher = {"allow_domains": ["allowed.test"], "block_domains": [], "source": "AWF_POLICY"}
    _, notice = _trail_with(tmp_path / "2", {"policy": POLICY, "ceiling": None, "request": launcher},
                            dns=[dns_line("blocked.test")])
    line = _suggested(notice.render(notice.denials())["text/plain"])
    assert line.startswith("AWF_POLICY that would allow them")
    assert json.loads(line.split(": ", 1)[1]) == {"allow_domains": ["allowed.test", "blocked.test"]}


def test_hosts_metadata_cannot_allow_are_not_suggested(tmp_path, capsys):
    """Outside the ceiling (pasting it would stop the kernel from starting),
    blocked, or already allowed: the line says no metadata change alone helps."""
    _, notice = _trail_with(tmp_path, {"policy": POLICY, "ceiling": [".allowed.test"], "request": NOTEBOOK_REQUEST},
                            dns=[dns_line("outside.test"), dns_line("bad.allowed.test")],
                            access=[squid_line("allowed.test", status="409", squid_status="TCP_MISS")])
    found = {d["host"]: d for d in notice.denials()}
    assert found["outside.test"]["reason"] == "outside the admin's domain_ceiling"
    assert not any(d["addable"] for d in found.values())
    assert _suggested(notice.render(list(found.values()))["text/plain"]).startswith("No change to the notebook")
    s = audit.summary(audit.read_kernel(tmp_path / KID), audit.load_policy(tmp_path / KID))
    assert s["add"] == [] and s["request"] is None and s["suggestion"] is None
    assert "nothing to add" in audit.format_summary(s)


def test_record_mode_summary_adds_what_the_run_reached(tmp_path):
    meta = {"policy": {"allow_domains": [], "block_domains": [], "mode": "record", "allow_all": True},
            "ceiling": None, "request": {"allow_domains": ["@pypi"], "block_domains": [], "source": "AWF_POLICY"}}
    folder, _ = _trail_with(tmp_path, meta, dns=[dns_line("pypi.org", "allowed"), dns_line("new.test", "allowed")])
    s = audit.summary(audit.read_kernel(folder), audit.load_policy(folder))
    assert s["add"] == ["new.test"]  # pypi.org is covered by the request's own @pypi
    assert s["request"] == {"allow_domains": ["@pypi", "new.test"]}


def test_the_notice_table_reads_left_to_right(notice):
    """JupyterLab's rendered-HTML style right-aligns table cells; every cell says left."""
    import re

    page = notice.render(notice.denials())["text/html"]
    cells = re.findall(r"<t[hd]( style='[^']*')?>", page)
    assert cells and all("text-align:left" in style for style in cells)
    assert "<table style='text-align:left" in page


# --- the kernel side stands alone ------------------------------------------------------------------------------


def test_the_kernel_side_needs_only_the_standard_library():
    """In the kernel, awf_kernel is not installed: /awf/lib holds this folder only."""
    import pathlib
    import subprocess
    import sys

    folder = pathlib.Path(awf_notice.__file__).parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import awf_notice, awf_records; "
            "assert awf_notice.records is awf_records; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('awf_kernel', 'IPython', 'traitlets')]; "
            "print(awf_records.safe_text('a\\x1bb'))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(folder)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "a\\x1bb"


def test_the_records_know_the_pods_intercept_ports():
    from awf_kernel.kernel_side import awf_records
    from awf_kernel.render import ports

    assert awf_records.INTERCEPT_PORTS == {str(ports.SQUID_HTTP_INTERCEPT): 80, str(ports.SQUID_HTTPS_INTERCEPT): 443}
    assert awf_records.WEB_PORTS == ports.WEB_PORTS
