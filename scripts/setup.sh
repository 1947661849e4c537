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
  ensure_runsc
  ensure_chp
  ensure_chromium
}

ensure_runsc() {
  # gVisor for the kernel container (AWFProvisioner.runtime=...), Debian's
  # runsc registered three ways (docs/architecture.md, "The kernel under
  # gVisor"):
  # - `runsc`: with its host network mode; the kernel shares the proxy's
  #   namespace, as under runc;
  # - `runsc-netstack`: the plain registration, gVisor's own network stack.
  #   Debian 12's runsc is too old to run it on Linux >= 6.11 (gVisor issue
  #   10704), so the provisioner refuses it there, before any container exists;
  # - `runsc-emulated`: the same runsc as on a kernel < 6.11
  #   (tests/gvisor/runsc-emulated), so the routed wiring that gVisor's own
  #   stack gets is tested here.
  install -D -m 0755 tests/gvisor/runsc-emulated /usr/local/libexec/awf-test/runsc
  if ! command -v runsc >/dev/null 2>&1; then
    log "apt-get install runsc"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc
  fi
  local changed
  changed=$(python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
runtimes = conf.setdefault("runtimes", {})
want = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]},
        "runsc-netstack": {"path": "/usr/bin/runsc"},
        "runsc-emulated": {"path": "/usr/local/libexec/awf-test/runsc"}}
changed = False
for name, spec in want.items():
    # Another registration of `runsc` is the admin's, except the plain one, which
    # Debian's runsc cannot run on this kernel: that one gets the host network mode.
    if name not in runtimes or (name == "runsc" and runtimes[name] == {"path": "/usr/bin/runsc"}):
        runtimes[name] = spec
        changed = True
if changed:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
    os.replace(path + ".tmp", path)
print("yes" if changed else "no")
PY
)
  if [[ "$changed" == yes ]]; then
    log "registered runsc in /etc/docker/daemon.json; reloading dockerd (SIGHUP)"
    kill -HUP "$(pidof dockerd)"
    local i
    for i in $(seq 50); do
      docker info --format '{{json .Runtimes}}' | grep -q '"runsc-emulated"' && return
      sleep 0.1
    done
    log "dockerd did not pick up the runsc registration"; return 1
  fi
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
