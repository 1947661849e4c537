"""`awf-kernel record NOTEBOOK`: run it once in record mode, then write the
minimal allowlist it actually used into its metadata, showing the diff.

Record mode lets through everything the admin bounds permit (ceiling and
block lists still apply) and logs it. It is asked for by this launcher
through AWF_POLICY; the kernel itself can never turn it on.
"""

from __future__ import annotations

import difflib
import json
import os
import sys

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from . import audit
from .check import server_config
from .errors import AWFError
from .policy import parse_domains
from .provisioner import AWFProvisioner
from .policy_source import POLICY_ENV, SESSION_ENV


def used_hosts(records: list[dict], always_allowed) -> list[str]:
    """Names the run reached (DNS answers or proxied requests), minus what the
    admin allows anyway: the smallest allow list that reproduces the run.
    Only entries of the policy grammar (`audit.allow_entry`): a log line
    claiming "allowed" for a raw IP, a malformed name or a public suffix never
    becomes an allow_domains entry that would stop the next start."""
    entries = {audit.allow_entry(audit.display_host(r)) for r in records if r.get("decision") == "allowed"}
    return sorted(e for e in entries if e is not None and not any(rule.matches(e) for rule in always_allowed))


def record(notebook: str, *, kernel_name: str, write: bool = True, timeout: float = 600, out=None) -> int:
    out = out or sys.stdout
    path = os.path.abspath(notebook)
    nb = nbformat.read(path, as_version=4)
    before = dict(nb.metadata.get("awf", {}))
    request = {k: v for k, v in before.items() if k != "mode"}
    request["mode"] = "record"

    km = KernelManager(kernel_name=kernel_name, config=server_config())
    client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=True,
                            resources={"metadata": {"path": os.path.dirname(path)}})
    try:
        client.execute(env={POLICY_ENV: json.dumps(request), SESSION_ENV: path})
        kernel_id, prov = km.kernel_id, km.provisioner
        if not isinstance(prov, AWFProvisioner):
            raise AWFError(f"kernel spec {kernel_name!r} does not use the awf-provisioner",
                           hint="record with an awf-kernel spec (`awf-kernel install`), e.g. --kernel-name awf-python")
        audit_dir, admin_allow = prov.audit_dir, parse_domains(prov.allow_domains, "allow_domains")
    finally:
        if km.has_kernel:
            km.shutdown_kernel()

    hosts = used_hosts(audit.records(audit_dir, kernel_id), admin_allow)
    after = {k: v for k, v in before.items() if k != "mode"}
    after["allow_domains"] = hosts
    old = json.dumps({"awf": before}, indent=1, sort_keys=True).splitlines(keepends=True)
    new = json.dumps({"awf": after}, indent=1, sort_keys=True).splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(old, new, f"{notebook} (metadata)", f"{notebook} (recorded)"))
    print(diff or "the notebook's metadata already matches what it used", file=out)
    if write and diff:
        on_disk = nbformat.read(path, as_version=4)  # not the executed copy: outputs stay as they were
        on_disk.metadata["awf"] = after
        nbformat.write(on_disk, path)
        print(f"wrote metadata.awf to {notebook} (kernel {kernel_id}; `awf-kernel logs {kernel_id}`)", file=out)
    return 0
