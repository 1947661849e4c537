"""Screenshots for docs/jupyterlab.md, taken by the browser tests.

Off by default. `AWF_DOCS_SCREENSHOTS=docs/img python3 -m pytest tests/browser`
writes them (PNG) into that folder; they are committed from there.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = os.environ.get("AWF_DOCS_SCREENSHOTS")


def shot(target, name: str) -> None:
    """A PNG of a page or a locator, when screenshots were asked for."""
    if not FOLDER:
        return
    path = Path(FOLDER) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    target.screenshot(path=str(path))
