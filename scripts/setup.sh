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
  ensure_chp
  ensure_chromium
}

ensure_chromium() {
  # The JupyterLab tests (tests/browser) drive Debian's chromium with Playwright
  # (pip, in the test extras), which cannot download a browser of its own here.
  if command -v chromium >/dev/null 2>&1; then return; fi
  log "apt-get install chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
}

ensure_chp() {
  # The hub tests (tests/hub) run a real JupyterHub, whose proxy is Node's
  # configurable-http-proxy from npm.
  if command -v configurable-http-proxy >/dev/null 2>&1; then return; fi
  if ! command -v npm >/dev/null 2>&1; then
    log "apt-get install nodejs npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  log "npm install -g configurable-http-proxy"
  npm install -g --no-fund --no-audit --loglevel=error configurable-http-proxy
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
