"""Driving JupyterLab from Playwright: notebooks on disk, cells, outputs.

Notebooks are written to the server's root with nbformat (signed with the
server's own notary when the test wants a trusted one: what JupyterLab's
"Trust Notebook" writes), opened by URL, and their cells run from the
keyboard, as a user does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
from nbformat.sign import NotebookNotary
from nbformat.v4 import new_code_cell, new_notebook

SPEC = {"awf-python": "Python (AWF sandboxed)", "awf-ceiling": "Python (AWF sandboxed: ceiling)"}

FETCH = """\
import requests
def fetch(host):
    try:
        r = requests.get(f"http://{host}/", timeout=10)
        return f"{r.status_code} {r.text[:40]!r}"
    except requests.RequestException as e:
        return type(e).__name__
"""


def write_notebook(lab, name: str, cells: list[str], awf: dict | None = None, *, kernel: str = "awf-python",
                   trusted: bool = True) -> Path:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": SPEC[kernel], "language": "python"}
    if awf is not None:
        nb.metadata["awf"] = awf
    path = lab.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if trusted:
        NotebookNotary(data_dir=str(lab.data_dir)).sign(nb)
    nbformat.write(nb, str(path))
    return path


def metadata_awf(path: Path):
    return json.loads(path.read_text())["metadata"].get("awf")


def open_notebook(page, lab, name: str, app: str = "lab") -> None:
    """Open a notebook in JupyterLab (app="lab") or Notebook 7 (app="notebooks")
    and wait until its sandboxed kernel is running and the toolbar says so."""
    # ?reset: no tabs restored from an earlier test's workspace
    url = f"{lab.url}/lab/tree/{name}?reset" if app == "lab" else f"{lab.url}/notebooks/{name}"
    goto(page, url)
    running = page.locator(".awf-ToolbarItem[data-running='true']:visible")
    try:
        running.wait_for(timeout=90_000)
        return
    except Exception:  # noqa: BLE001 - playwright's TimeoutError
        if "PortClash" not in lab.log():
            raise AssertionError(f"no running sandboxed kernel for {name}; server log:\n{lab.log()}") from None
    # Another process took a port between Jupyter's choice and the pod's publishing
    # it (concurrent kernel starts on this machine): as a user would, try once more.
    goto(page, url)
    try:
        running.wait_for(timeout=90_000)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"no running sandboxed kernel for {name} ({exc}); server log:\n{lab.log()}") from None


def goto(page, url: str, attempts: int = 4) -> None:
    """page.goto, again when Chromium aborted it because the machine's network
    changed (Docker adds and removes interfaces as pods start and stop; Chromium
    then aborts navigations in flight, even to loopback)."""
    for attempt in range(attempts):
        try:
            page.goto(url)
            return
        except Exception as exc:  # playwright's Error
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5)


def toolbar(page):
    return page.locator(".awf-ToolbarItem-button:visible")


def wait_toolbar(page, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    label = ""
    while time.monotonic() < deadline:
        label = toolbar(page).text_content() or ""
        if label == text:
            return label
        time.sleep(0.2)
    raise AssertionError(f"toolbar says {label!r}, expected {text!r}")


def cell(page, index: int):
    return page.locator(".jp-Notebook:visible .jp-Cell").nth(index)


def run_cell(page, index: int, expect: str | None = None, timeout: float = 90):
    """Run one cell (click its editor, Shift+Enter) and wait until its output
    contains `expect` (or its execution count changes)."""
    c = cell(page, index)
    before = c.locator(".jp-InputPrompt").text_content()
    c.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prompt = c.locator(".jp-InputPrompt").text_content() or ""
        done = "*" not in prompt and prompt != before
        if done and (expect is None or expect in output_text(page, index)):
            return c
        time.sleep(0.2)
    raise AssertionError(f"cell {index} did not finish with {expect!r}; output: {output_text(page, index)!r}")


def output_text(page, index: int) -> str:
    outputs = cell(page, index).locator(".jp-OutputArea-output")
    return "\n".join(outputs.all_text_contents())
