#!/usr/bin/env bash
# Runs the whole test suite against a real Docker engine, as CI does.
# Installs what the tests need first: the engine (if missing), the package
# with its test extras, the sandbox images and the kernel spec.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-test] $*" >&2; }

SAFETY_NET=(DOCKER-USER -i br-+ ! -o br-+ -m comment --comment awf-kernel-test-safety-net -j DROP)

safety_net() {
  # Belt and braces while tests run: nothing from a user-defined bridge may be
  # forwarded off this machine. The sandbox must hold without it; the tests'
  # canary, not this rule, is what detects a leak. Removed again on exit, so a
  # developer's other Docker networks work as before.
  iptables -C "${SAFETY_NET[@]}" 2>/dev/null || iptables -I "${SAFETY_NET[@]}"
  trap 'iptables -D "${SAFETY_NET[@]}" 2>/dev/null || true' EXIT
}

main() {
  bash scripts/setup.sh
  safety_net
  local rc=0
  python3 -m pytest "$@" || rc=$?
  log "checking for leftover sandbox resources"
  awf-kernel gc --dry-run
  left=$(docker ps -aq --filter label=io.awf-kernel.managed=true | wc -l)
  nets=$(docker network ls -q --filter label=io.awf-kernel.managed=true | wc -l)
  tleft=$(docker ps -aq --filter label=awf-kernel.test=true | wc -l)
  if [[ "$left" != 0 || "$nets" != 0 || "$tleft" != 0 ]]; then
    log "FAIL: $left container(s), $nets network(s), $tleft test container(s) left behind"
    docker ps -a --filter label=io.awf-kernel.managed=true
    rc=1
  fi
  return $rc
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
