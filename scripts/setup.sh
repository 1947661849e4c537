#!/usr/bin/env bash
# Everything a sandboxed kernel needs on this machine: a Docker engine (and the
# base image when no registry is reachable), the package, the images, the spec.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-setup] $*" >&2; }

main() {
  bash scripts/ensure-docker.sh
  log "pip install .[test]"
  python3 -m pip install -q --disable-pip-version-check ".[test]"
  log "awf-kernel build"
  awf-kernel build
  awf-kernel install --user
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
