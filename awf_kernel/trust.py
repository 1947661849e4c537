"""Consent for notebooks from elsewhere: Jupyter's own notebook trust.

A notebook's `metadata.awf` asks for egress. A notebook the user wrote or
trusted ("Trust Notebook" in JupyterLab, `jupyter trust`) carries a
signature in the user's notary database; one downloaded from somewhere else
does not, so its request is held back (the kernel gets the admin policy
only) until the user confirms it. The signature is the one JupyterLab
writes, kept in the data folder of the user the server runs as, which the
kernel never sees (deny_read covers Jupyter's folders).
"""

from __future__ import annotations

import logging
from typing import Any

import nbformat
from nbformat.sign import NotebookNotary

log = logging.getLogger("awf_kernel")


def _notary(parent: Any = None) -> NotebookNotary:
    # The server's own config (its data_dir, db_file) reaches the notary through the parent.
    return NotebookNotary(parent=parent) if parent is not None else NotebookNotary()


def is_trusted(path: str, parent: Any = None) -> bool:
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        return bool(_notary(parent).check_signature(nb))
    except Exception as exc:  # noqa: BLE001 - an unreadable notebook or notary is simply not trusted
        log.warning("awf-kernel: cannot check the trust of %s: %s", path, exc)
        return False


def trust(path: str, parent: Any = None) -> None:
    """Sign the notebook as the user's (what "Trust Notebook" does)."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    _notary(parent).sign(nb)
