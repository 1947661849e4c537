#!/usr/bin/env bash
# Runs the whole test suite against a real Docker engine, as CI does.
# Installs what the tests need first: the engine (if missing), the package
# with its test extras, the sandbox images and the kernel spec.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-test] $*" >&2; }

SAFETY_NET_CHAIN=AWF-TEST-SAFETY-NET
SAFETY_NET_COMMENT=awf-kernel-test-safety-net
SAFETY_NET_INPUTS=(docker0 br-+ awft+)
POOL_PASS=(tests/integration/test_attacks.py tests/integration/test_hardening.py
           tests/integration/test_conformance.py tests/integration/test_live_policy.py
           tests/integration/test_lifecycle.py tests/integration/test_default_path.py)
GVISOR_PASS=(tests/integration/test_attacks.py tests/integration/test_hardening.py
             tests/integration/test_lifecycle.py tests/integration/test_conformance.py
             tests/integration/test_runtime.py tests/integration/test_broker.py
             tests/integration/test_hostile_names.py tests/integration/test_kernel_boot.py)

safety_net() {
  # Belt and braces while tests run: nothing from a Docker bridge (the default
  # `docker0` or a user-defined `br-*`) may be forwarded off this machine. The
  # one way out is the tests' own host beyond the Docker host (a network
  # namespace behind an `awft*` veth, tests/integration/testnet_fixtures.py),
  # and it may only answer. Bridge to same-kind bridge stays Docker's business.
  # The sandbox must hold without this; the tests' canary, not this rule, is
  # what detects a leak. Removed again on exit, so a developer's Docker
  # networks (and image builds) work as before.
  local chain=$SAFETY_NET_CHAIN dev
  safety_net_off() {
    local dev
    for dev in "${SAFETY_NET_INPUTS[@]}"; do
      while iptables -w -D DOCKER-USER -i "$dev" -m comment --comment "$SAFETY_NET_COMMENT" \
          -j "$SAFETY_NET_CHAIN" 2>/dev/null; do :; done
    done
    # The single rule of earlier versions, if a crashed run left it behind.
    while iptables -w -D DOCKER-USER -i br-+ ! -o br-+ -m comment --comment "$SAFETY_NET_COMMENT" \
        -j DROP 2>/dev/null; do :; done
    iptables -w -F "$SAFETY_NET_CHAIN" 2>/dev/null || true
    iptables -w -X "$SAFETY_NET_CHAIN" 2>/dev/null || true
  }
  # Another run on this machine (its shell still alive) put it up: leave it to
  # that run. Otherwise what is there is a crashed run's leftover: replace it.
  local owner
  owner=$(iptables -w -S "$chain" 2>/dev/null | sed -n 's/.*safety-net pid=\([0-9][0-9]*\).*/\1/p' | head -1 || true)
  if [[ -n "$owner" && "$owner" != "$$" ]] && kill -0 "$owner" 2>/dev/null; then
    log "safety net already up (test run $owner); leaving it to that run"
    return
  fi
  # Images tests build mid-session need the Debian mirror through docker0:
  # build them now, while it can still be reached.
  python3 -c 'from tests.integration.testnet_fixtures import prebuild_images; prebuild_images()'
  safety_net_off
  trap safety_net_off EXIT
  trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM  # so EXIT runs on these too
  iptables -w -N "$chain"
  iptables -w -A "$chain" -i br-+ -o br-+ -j RETURN
  iptables -w -A "$chain" -i docker0 -o docker0 -j RETURN
  iptables -w -A "$chain" -i br-+ -o awft+ -j RETURN
  iptables -w -A "$chain" -i docker0 -o awft+ -j RETURN
  iptables -w -A "$chain" -i awft+ -o br-+ -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -w -A "$chain" -i awft+ -o docker0 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -w -A "$chain" -m comment --comment "$SAFETY_NET_COMMENT pid=$$" -j DROP
  for dev in "${SAFETY_NET_INPUTS[@]}"; do
    iptables -w -I DOCKER-USER -i "$dev" -m comment --comment "$SAFETY_NET_COMMENT" -j "$chain"
  done
}

main() {
  bash scripts/setup.sh
  log "ruff check (lint) and mypy (types), configured in pyproject.toml"
  python3 -m ruff check awf_kernel tests
  python3 -m mypy
  safety_net
  local rc=0
  python3 -m pytest "$@" || rc=$?
  if [[ $# == 0 ]]; then
    # The security and conformance suites again, every kernel from a warm
    # pool pod (AWFProvisioner.pool_size): pooled pods must hold the same way.
    log "second pass: the security and conformance suites with the warm pool (AWF_TEST_POOL_SIZE=1)"
    AWF_TEST_POOL_SIZE=1 python3 -m pytest "${POOL_PASS[@]}" || rc=$?
    # And again with every kernel under gVisor (scripts/setup.sh registers
    # `runsc` with --network=host), judged by the same test internet.
    log "third pass: the security, lifecycle and conformance suites under gVisor (AWF_TEST_RUNTIME=runsc)"
    AWF_TEST_RUNTIME=runsc python3 -m pytest "${GVISOR_PASS[@]}" || rc=$?
    # And under gVisor with its own network stack, the plain registration's
    # mode (the routed wiring, awf_kernel/render/link.py); this host's kernel
    # needs the emulation wrapper for Debian's runsc (tests/gvisor/runsc-emulated).
    log "fourth pass: the same suites under gVisor's own network stack (AWF_TEST_RUNTIME=runsc-emulated)"
    AWF_TEST_RUNTIME=runsc-emulated python3 -m pytest "${GVISOR_PASS[@]}" || rc=$?
  fi
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
