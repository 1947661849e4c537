"""Jupyter's notebook trust, as the sandbox's consent signal.

A notebook from elsewhere is untrusted until the user trusts it (the notary
signature JupyterLab's "Trust Notebook" writes). The provisioner holds such
a notebook's request pending; here the server reads the signature for the
panel and writes it when the user confirms the domains the notebook asks for.
"""

from __future__ import annotations

import asyncio
import json

import nbformat
from jupyter_core.utils import ensure_async

from ..policy_source import MAX_NOTEBOOK_BYTES


def _read(os_path: str):
    import os

    if os.path.getsize(os_path) > MAX_NOTEBOOK_BYTES:
        raise ValueError("notebook too large")
    return nbformat.read(os_path, as_version=4)


async def is_trusted(contents_manager, os_path: str) -> bool | None:
    """The file's signature checks out with the server's notary (None: unreadable)."""
    try:
        nb = await asyncio.to_thread(_read, os_path)
    except (OSError, ValueError, json.JSONDecodeError, nbformat.reader.NotJSONError):
        return None
    return bool(contents_manager.notary.check_signature(nb))


async def metadata_awf(os_path: str) -> tuple[bool, object]:
    """(has an awf entry, the entry) as written in the file on disk."""
    try:
        nb = await asyncio.to_thread(_read, os_path)
    except (OSError, ValueError, json.JSONDecodeError, nbformat.reader.NotJSONError):
        return False, None
    md = nb.get("metadata") or {}
    return "awf" in md, md.get("awf")


async def trust(contents_manager, path: str) -> None:
    """Sign the notebook as it is on disk: the same as JupyterLab's Trust Notebook."""
    await ensure_async(contents_manager.trust_notebook(path))
