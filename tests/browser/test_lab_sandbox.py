"""JupyterLab in headless Chromium: the sandbox seen, granted and applied
without leaving the notebook (issue 10).

Judged by the test internet (did the request reach the host?) and by the
notebook file on disk, not by what the page claims.
"""

from __future__ import annotations

from nbformat import read as read_nb
from nbformat.sign import NotebookNotary

from tests.browser.helpers import (FETCH, metadata_awf, open_notebook, output_text, run_cell, toolbar, wait_toolbar,
                                   write_notebook)
from tests.browser.screenshots import shot


def _kernel_ids(lab, name: str) -> list[str]:
    return [s["kernel"]["id"] for s in lab.api("/api/sessions") if s["path"] == name]


def _row(page, host: str):
    return page.locator(f".awf-Notice-row[data-host='{host}']").last


def test_allow_from_the_notice_applies_without_restart(page, lab, testnet):
    path = write_notebook(lab, "allow.ipynb", [FETCH + "x = 41", "print(x + 1, fetch('allowed.test'))"],
                          {"allow_domains": ["other.test"]})
    open_notebook(page, lab, "allow.ipynb")
    wait_toolbar(page, "Sandboxed: 1 domain")
    shot(page.locator(".jp-NotebookPanel-toolbar"), "toolbar")
    kernels = _kernel_ids(lab, "allow.ipynb")
    assert len(kernels) == 1

    run_cell(page, 0)
    mark = testnet.mark()
    run_cell(page, 1, expect="42 403")
    assert testnet.web_hits("allowed.test", since=mark) == []
    allow = _row(page, "allowed.test").locator(".awf-Allow")
    allow.wait_for()
    assert allow.text_content() == "Allow allowed.test"
    shot(page.locator(".jp-Cell").nth(1), "notice")

    allow.click()
    _row(page, "allowed.test").locator(".awf-Allowed").wait_for()
    assert "applied" in _row(page, "allowed.test").text_content()
    assert metadata_awf(path) == {"allow_domains": ["other.test", "allowed.test"]}
    wait_toolbar(page, "Sandboxed: 2 domains")

    mark = testnet.mark()
    run_cell(page, 1, expect="42 200 'hello from allowed.test'")
    assert [h for h in testnet.web_hits("allowed.test", since=mark) if h["event"] == "request"]
    assert _kernel_ids(lab, "allow.ipynb") == kernels  # the same kernel: x survived, no restart


def test_hosts_outside_the_admin_bounds_get_a_reason_not_a_button(page, lab, testnet):
    # awf-ceiling: domain_ceiling allowed.test, *.allowed.test, other.test; block_domains other.test
    path = write_notebook(lab, "ceiling.ipynb", [FETCH, "print(fetch('blocked.test'), fetch('other.test'))"],
                          {"allow_domains": ["allowed.test"]}, kernel="awf-ceiling")
    before = path.read_bytes()
    open_notebook(page, lab, "ceiling.ipynb")
    wait_toolbar(page, "Sandboxed: 1 domain")
    run_cell(page, 0)
    mark = testnet.mark()
    run_cell(page, 1, expect="403 ")
    for host in ("blocked.test", "other.test"):
        _row(page, host).wait_for()
    assert "domain_ceiling" in _row(page, "blocked.test").text_content()
    assert "block list" in _row(page, "other.test").text_content()
    assert page.locator(".awf-Notice .awf-Allow").count() == 0
    assert path.read_bytes() == before
    assert testnet.web_hits("blocked.test", since=mark) == [] and testnet.web_hits("other.test", since=mark) == []


def test_untrusted_notebook_waits_for_confirmation(page, lab, testnet):
    path = write_notebook(lab, "downloaded.ipynb", [FETCH, "print(fetch('allowed.test'))"],
                          {"allow_domains": ["allowed.test"]}, trusted=False)
    open_notebook(page, lab, "downloaded.ipynb")
    wait_toolbar(page, "Sandboxed: waiting for trust")
    run_cell(page, 0)
    mark = testnet.mark()
    run_cell(page, 1, expect="403 ")
    assert testnet.web_hits("allowed.test", since=mark) == []
    # The notice offers no Allow either: consent comes first.
    row = _row(page, "allowed.test")
    row.locator(".awf-Why").wait_for()
    assert "trust" in row.text_content() and row.locator(".awf-Allow").count() == 0

    toolbar(page).click()
    pending = page.locator(".awf-Panel .awf-Pending")
    pending.wait_for()
    assert "allowed.test" in pending.text_content()
    shot(page, "panel-pending")
    pending.locator(".awf-Confirm").click()
    wait_toolbar(page, "Sandboxed: 1 domain")
    notary = NotebookNotary(data_dir=str(lab.data_dir))
    assert notary.check_signature(read_nb(str(path), as_version=4))

    mark = testnet.mark()
    run_cell(page, 1, expect="200 'hello from allowed.test'")
    assert testnet.web_hits("allowed.test", since=mark)


def test_panel_edits_are_validated_by_the_server_and_narrowing_applies(page, lab, testnet):
    path = write_notebook(lab, "edit.ipynb", [FETCH, "print(fetch('other.test'), fetch('allowed.test'))"],
                          {"allow_domains": ["other.test", "@pypi"]})
    open_notebook(page, lab, "edit.ipynb")
    wait_toolbar(page, "Sandboxed: 3 domains")
    run_cell(page, 0)
    run_cell(page, 1, expect="200 'hello from other.test' 403")

    toolbar(page).click()
    panel = page.locator(".awf-Panel")
    panel.locator(".awf-Effective-allow").wait_for()
    assert "files.pythonhosted.org" in panel.locator(".awf-Request-allow_domains").text_content()  # @pypi expanded
    allow = panel.locator(".awf-Edit-allow")
    allow.fill("allowed.test\n*")
    error = panel.locator(".awf-Errors li")
    error.first.wait_for()
    assert error.first.text_content().startswith("awf.allow_domains[1]: '*' would allow everything")
    assert panel.locator(".awf-Save").is_disabled()
    shot(page, "panel")
    shot(panel.locator(".awf-Section").last, "panel-edit")
    allow.fill("allowed.test")  # other.test and @pypi go: narrowing
    page.wait_for_function("() => !document.querySelector('.awf-Panel .awf-Save').disabled")
    panel.locator(".awf-Save").click()
    wait_toolbar(page, "Sandboxed: 1 domain")
    assert metadata_awf(path) == {"allow_domains": ["allowed.test"]}

    mark = testnet.mark()
    run_cell(page, 1, expect="403 ")
    assert output_text(page, 1).startswith("403 ") and "200 'hello from allowed.test'" in output_text(page, 1)
    assert testnet.web_hits("other.test", since=mark) == []


def test_notebook7_shows_the_state_and_allows(page, lab, testnet):
    path = write_notebook(lab, "nb7.ipynb", [FETCH, "print(fetch('allowed.test'))"], {"allow_domains": []})
    open_notebook(page, lab, "nb7.ipynb", app="notebooks")
    wait_toolbar(page, "Sandboxed: 0 domains")
    toolbar(page).click()  # the panel opens in Notebook 7's right side bar
    page.locator(".awf-Panel .awf-Effective-allow").wait_for()
    assert "nothing" in page.locator(".awf-Panel .awf-Effective-allow").text_content()
    run_cell(page, 0)
    run_cell(page, 1, expect="403 ")
    allow = _row(page, "allowed.test").locator(".awf-Allow")
    allow.click()
    _row(page, "allowed.test").locator(".awf-Allowed").wait_for()
    assert metadata_awf(path) == {"allow_domains": ["allowed.test"]}
    mark = testnet.mark()
    run_cell(page, 1, expect="200 'hello from allowed.test'")
    assert testnet.web_hits("allowed.test", since=mark)


HOSTILE = r'''
from IPython.display import publish_display_data
bad = "<img src=x onerror=\"window.__awf_pwned=1\">"
publish_display_data({"application/vnd.awf.denials+json": {"notebook": bad, "kernel_id": bad, "denials": [
    {"host": bad, "ports": [80], "via": ["http"], "valid_name": True, "addable": True, "reason": bad,
     "fix": "<script>window.__awf_pwned=2</script>"},
    {"host": "gro.ipyp\u202eevil.test", "ports": [443], "valid_name": True, "addable": True, "reason": "r", "fix": "f"},
    {"host": "10.0.0.1", "ports": [80], "valid_name": True, "addable": True, "reason": "r", "fix": "f"},
    {"host": ["not", "a", "string"], "ports": "80", "valid_name": True, "addable": True},
    {"host": "also.allowed.test", "ports": [80], "valid_name": False, "addable": True, "reason": "r", "fix": "f"},
]}})
'''


def test_a_notice_forged_by_kernel_code_is_shown_as_text_and_gets_no_button(page, lab, testnet):
    """The bundle comes from the kernel (hostile code): its strings are text,
    and a host that is not a valid name (or that the bundle itself says is not)
    gets no Allow button."""
    path = write_notebook(lab, "forged.ipynb", [HOSTILE], {"allow_domains": []})
    before = path.read_bytes()
    open_notebook(page, lab, "forged.ipynb")
    run_cell(page, 0, expect="window.__awf_pwned=2")
    notice = page.locator(".awf-Notice").last
    assert notice.locator(".awf-Notice-row").count() == 5
    assert "<img src=x" in notice.text_content()
    assert notice.locator("img, script, b").count() == 0
    assert page.evaluate("() => window.__awf_pwned") is None
    page.wait_for_timeout(1000)  # the server was (not) asked
    assert notice.locator(".awf-Allow").count() == 0
    assert path.read_bytes() == before
