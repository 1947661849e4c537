#!/usr/bin/env bash
# One command from a fresh machine to a sandboxed kernel running the demo
# notebook: Docker (installed and started if missing), the package, the
# images, the kernel spec, then notebooks/demo.ipynb against a small test
# internet of its own, printing what the sandbox allowed and blocked.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-quickstart] $*" >&2; }

main() {
  bash scripts/ensure-docker.sh
  log "pip install ."
  python3 -m pip install -q --disable-pip-version-check ".[test]"
  log "awf-kernel build"
  awf-kernel build 2>&1 | grep -E "^\[awf-build\] |Successfully|^built" || true
  awf-kernel install --user
  log "running notebooks/demo.ipynb in the sandbox"
  python3 scripts/demo.py notebooks/demo.ipynb
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
