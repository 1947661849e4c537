#!/usr/bin/env bash
# [awf-link] Routed pods only: runs before each kernel container starts, as
# root holding only NET_ADMIN, in the kernel's own network namespace (the
# holder's). The firewall step put one end of a veth pair here; this gives it
# its address and makes the proxy's end the default route, so every packet
# the kernel sends is judged in the proxy's namespace. Idempotent: a
# restarted kernel needs it again (gVisor takes the address away at start).
#
# Inputs: AWF_LINK_IF, AWF_LINK_ADDRESS (address/prefix), AWF_LINK_GATEWAY.
set -euo pipefail

log() { echo "[awf-link] $*" >&2; }

main() {
  local deadline=$((SECONDS + ${AWF_WAIT_SECONDS:-10}))
  until ip link show "${AWF_LINK_IF:?}" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { log "no interface $AWF_LINK_IF in this namespace"; exit 71; }
    sleep 0.05
  done
  ip addr replace "${AWF_LINK_ADDRESS:?}" dev "$AWF_LINK_IF"
  ip link set "$AWF_LINK_IF" up
  ip route replace default via "${AWF_LINK_GATEWAY:?}" dev "$AWF_LINK_IF"
  log "link $AWF_LINK_IF $AWF_LINK_ADDRESS via $AWF_LINK_GATEWAY"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
