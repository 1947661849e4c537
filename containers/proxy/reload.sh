#!/usr/bin/env bash
# [awf-reload] Puts a new policy in force in a running proxy, without a
# restart: a pool pod claimed by a kernel, or a notebook's policy changed
# while its kernel runs. Run by the provisioner (`docker exec`, as `proxy`)
# after it copied the rendered files into /etc/awf/next.
#
#   awf-reload GENERATION [SECONDS]
#
# Exits 0 only when both halves answer by the new files: the resolver wrote
# their generation, and Squid reopened all three listening ports (its
# reconfigure closes and reopens them), each owned by the proxy's uid, so no
# other process in the namespace holds one. Any other outcome exits non-zero
# and the provisioner stops the pod: a half-applied policy never stays.
set -euo pipefail

CONF_DIR=/etc/awf
NEXT=$CONF_DIR/next
GEN=${1:?generation}
WAIT=${2:-5}
SQUID_PORTS=(3128 3129 3130)
log() { echo "[awf-reload] $*" >&2; }

listener() {
  # The inode and owner uid of the socket listening on 127.0.0.1:$1, from
  # /proc/net/tcp (no tools needed, nothing the kernel can fake from its uid).
  local hex
  hex=$(printf '0100007F:%04X' "$1")
  awk -v a="$hex" '$2 == a && $4 == "0A" {print $10 ":" $8}' /proc/net/tcp
}

check_files() {
  [[ -s $NEXT/squid.conf && -s $NEXT/resolver.json ]] || { log "missing files in $NEXT"; exit 64; }
  grep -q "generation $GEN\$" "$NEXT/squid.conf" || { log "squid.conf is not generation $GEN"; exit 64; }
  squid -k parse -f "$NEXT/squid.conf" 2>/tmp/reload-parse.log || {
    cat /tmp/reload-parse.log >&2; log "new squid.conf does not parse; the current policy stays"; exit 65; }
}

main() {
  check_files
  local before=() port
  for port in "${SQUID_PORTS[@]}"; do before+=("$(listener "$port")"); done
  mv -f "$NEXT/squid.conf" "$CONF_DIR/squid.conf"
  mv -f "$NEXT/resolver.json" "$CONF_DIR/resolver.json"
  kill -HUP "$(cat /run/awf/resolver.pid)"
  squid -k reconfigure -f "$CONF_DIR/squid.conf"
  local deadline=$((SECONDS + WAIT)) i now ok
  while :; do
    ok=1
    [[ "$(cat /run/awf/resolver.generation 2>/dev/null)" == "$GEN" ]] || ok=0
    i=0
    for port in "${SQUID_PORTS[@]}"; do
      now=$(listener "$port")
      # a new socket (reconfigure reopened it), exactly one, and Squid's (uid 13)
      [[ -n "$now" && "$now" != "${before[$i]}" && "$now" != *$'\n'* && "${now#*:}" == "$(id -u)" ]] || ok=0
      i=$((i + 1))
    done
    (( ok )) && { log "policy $GEN in force"; exit 0; }
    (( SECONDS < deadline )) || { log "policy $GEN not confirmed within ${WAIT}s"; exit 70; }
    sleep 0.02
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
