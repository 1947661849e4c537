"""`awf-kernel record`: which hosts of a record-mode run become allow_domains entries."""

from __future__ import annotations

from awf_kernel.policy import parse_domains
from awf_kernel.record import used_hosts


def rec(host, decision="allowed"):
    return {"host": host, "decision": decision}


def test_only_entries_of_the_policy_grammar_are_written():
    records = [rec("pypi.org"), rec("API.Example.org."), rec("files.pythonhosted.org"),
               rec("192.0.2.1"), rec("0x7f.1"), rec("[::1]"),                # raw IPs, any form
               rec("a..b"), rec("x\\x0a.test"), rec("-bad.test"), rec("a.123"),  # not host names
               rec("co.uk"), rec("com"),                                    # public suffixes
               rec("?"), rec(None), rec("blocked.test", "denied")]
    assert used_hosts(records, ()) == ["api.example.org", "files.pythonhosted.org", "pypi.org"]


def test_what_the_admin_allows_anyway_is_left_out():
    records = [rec("pypi.org"), rec("files.pythonhosted.org"), rec("a.internal.test")]
    assert used_hosts(records, parse_domains(["@pypi", ".internal.test"], "t")) == []
