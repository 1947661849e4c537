#!/usr/bin/env bash
# One command from a fresh machine to a sandboxed kernel running the demo
# notebook: Docker (installed and started if missing), the package, the
# images, the kernel spec, then notebooks/demo.ipynb against a small test
# internet of its own, printing what the sandbox allowed and blocked.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-quickstart] $*" >&2; }

main() {
  bash scripts/setup.sh 2>&1 | grep -v "^\[awf-build [a-z]*\]  --->" >&2
  log "running notebooks/demo.ipynb in the sandbox"
  python3 scripts/demo.py notebooks/demo.ipynb
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
