"""Run a notebook in the sandbox against a small test internet of its own and
print what the sandbox allowed and blocked.

    python3 scripts/demo.py notebooks/demo.ipynb

The test internet (tests/testnet: allowed.test, blocked.test, other.test and a
canary, on an `--internal` Docker network) is created for the run and removed
afterwards; the kernel spec used points at it through the same settings an
operator would use (`egress_network`, `dns_servers`).
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
from collections import Counter

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from awf_kernel import audit, kernelspec  # noqa: E402
from awf_kernel.provisioner import AWFProvisioner  # noqa: E402
from tests.integration.testnet_fixtures import running_testnet  # noqa: E402


def show_outputs(nb) -> None:
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        print(f"--- cell {i + 1} ---")
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                print(out.text.rstrip())
            elif out.output_type == "error":
                print(f"{out.ename}: {out.evalue}")
            elif out.output_type == "display_data" and "text/plain" in out.data:
                print(out.data["text/plain"])  # e.g. the sandbox's notice of what it blocked


def summary(kernel_id: str) -> None:
    records = list(audit.records(AWFProvisioner().audit_dir, kernel_id))
    allowed = Counter(audit.display_host(r) for r in records if r.get("decision") == "allowed")
    denied = Counter(audit.display_host(r) for r in records if r.get("decision") == "denied")
    print("\n=== what the sandbox did (awf-kernel logs %s) ===" % kernel_id)
    for host, n in sorted(allowed.items()):
        print(f"  allowed  {host}  ({n} DNS/HTTP events)")
    for host, n in sorted(denied.items()):
        print(f"  BLOCKED  {host}  ({n} DNS/HTTP events)")


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    with running_testnet() as net, tempfile.TemporaryDirectory() as prefix:
        kernelspec.install(prefix=prefix, settings={"egress_network": net.network, "dns_servers": [net.dns_ip]})
        ksm = KernelSpecManager(kernel_dirs=[f"{prefix}/share/jupyter/kernels"])
        km = KernelManager(kernel_name=kernelspec.KERNEL_NAME, kernel_spec_manager=ksm)
        client = NotebookClient(nb, km=km, timeout=120,
                                resources={"metadata": {"path": str(pathlib.Path(path).parent)}})
        print(f"policy from the notebook's metadata: {json.dumps(nb.metadata.get('awf'))}")
        try:
            client.execute(env={"AWF_POLICY": json.dumps(nb.metadata.get("awf", {}))})
            ok = True
        except Exception as exc:  # noqa: BLE001 - report, then show what ran
            print(f"notebook failed: {exc}")
            ok = False
        finally:
            if km.has_kernel:
                km.shutdown_kernel()
        show_outputs(nb)
        summary(km.kernel_id)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "notebooks" / "demo.ipynb")))
