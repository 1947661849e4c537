#!/usr/bin/env bash
# [awf-reload] Puts a new policy in force in a running proxy, without a
# restart: a pool pod claimed by a kernel, or a notebook's policy changed
# while its kernel runs. Run by the provisioner (`docker exec`, as `proxy`)
# with the rendered files base64-encoded in AWF_SQUID_CONF and
# AWF_RESOLVER_JSON.
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
SQUID_PORTS=(0C38 0C39 0C3A)  # 3128 3129 3130, as /proc/net/tcp writes them
log() { echo "[awf-reload] $*" >&2; }

listeners() {
  # "port inode uid" of every socket listening on 127.0.0.1 at Squid's ports,
  # from /proc/net/tcp in one read (no tools needed, nothing the kernel can
  # fake from its uid).
  awk 'NR > 1 && $4 == "0A" && $2 ~ /^0100007F:0C3[89A]$/ {
         split($2, a, ":"); print a[2], $10, $8 }' /proc/net/tcp | sort
}

receive_files() {
  mkdir -p "$NEXT"
  printf '%s' "${AWF_SQUID_CONF:?}" | base64 -d >"$NEXT/squid.conf"
  printf '%s' "${AWF_RESOLVER_JSON:?}" | base64 -d >"$NEXT/resolver.json"
}

check_files() {
  [[ -s $NEXT/squid.conf && -s $NEXT/resolver.json ]] || { log "missing files in $NEXT"; exit 64; }
  grep -q "generation $GEN\$" "$NEXT/squid.conf" || { log "squid.conf is not generation $GEN"; exit 64; }
  squid -k parse -f "$NEXT/squid.conf" 2>/tmp/reload-parse.log || {
    cat /tmp/reload-parse.log >&2; log "new squid.conf does not parse; the current policy stays"; exit 65; }
}

main() {
  receive_files
  check_files
  local before me now deadline=$((SECONDS + WAIT))
  me=$(id -u)
  before=$(listeners)
  mv -f "$NEXT/squid.conf" "$CONF_DIR/squid.conf"
  mv -f "$NEXT/resolver.json" "$CONF_DIR/resolver.json"
  kill -HUP "$(cat /run/awf/resolver.pid)"
  squid -k reconfigure -f "$CONF_DIR/squid.conf"
  while :; do
    now=$(listeners)
    # each of the three ports: exactly one listener, a new socket (reconfigure
    # reopened it), owned by the proxy's uid; and the resolver's generation.
    if [[ "$(cat /run/awf/resolver.generation 2>/dev/null)" == "$GEN" ]] \
       && [[ "$(awk -v me="$me" '$3 == me {print $1}' <<<"$now" | tr '\n' ' ')" == "${SQUID_PORTS[*]} " ]] \
       && [[ "$(awk '{print $1}' <<<"$now" | wc -l)" == 3 ]] \
       && [[ -z "$(comm -12 <(awk '{print $2}' <<<"$before" | sort) <(awk '{print $2}' <<<"$now" | sort))" ]]; then
      log "policy $GEN in force"
      exit 0
    fi
    (( SECONDS < deadline )) || { log "policy $GEN not confirmed within ${WAIT}s: $(tr '\n' ';' <<<"$now")"; exit 70; }
    sleep 0.01
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
