#!/usr/bin/env bash
# [awf-proxy] Runs as the unprivileged `proxy` user: the filtering resolver in
# the background, then Squid in the foreground. The provisioner writes the
# rendered configuration into /etc/awf before starting the container.
set -euo pipefail

CONF_DIR=/etc/awf
log() { echo "[awf-proxy] $*" >&2; }

refuse_second_run() {
  # A pod is set up once: its firewall step ran against this container's
  # namespace when it first started. Started again (`docker restart`, the
  # engine's restart policy), it would have a new namespace without rules, so
  # it refuses; the provisioner then reports the kernel dead. The marker lives
  # in the per-kernel audit folder (a host folder the kernel cannot write) and
  # is named after this container, so a new pod for the same kernel starts.
  local marker="/var/log/awf/.proxy-started-${HOSTNAME:?}"
  if ! ( set -o noclobber; : >"$marker" ) 2>/dev/null; then
    log "this pod's proxy ran before; a pod container never runs twice (start a new kernel)"
    exit 66
  fi
}

check_config() {
  # A proxy without its policy must not start: the firewall step would then
  # wait forever instead of failing, and no kernel must run unfiltered.
  for f in squid.conf resolver.json; do
    [[ -s "$CONF_DIR/$f" ]] || { log "missing $CONF_DIR/$f"; exit 64; }
  done
}

link_listeners() {
  # squid.conf includes this file: Squid's ports on the kernel's link too,
  # when the kernel sits beyond one (AWF_LINK_ADDRESS, routed pods only).
  local out=/run/awf/listen-link.conf tls
  echo "# the kernel's link (routed pods only)" >"$out"
  [[ -n "${AWF_LINK_ADDRESS:-}" ]] || return 0
  tls="cert=/etc/awf-proxy/cert.pem key=/etc/awf-proxy/key.pem generate-host-certificates=off"
  {
    echo "http_port $AWF_LINK_ADDRESS:3128 name=explicit_link"
    echo "http_port $AWF_LINK_ADDRESS:3129 name=http_intercept_link intercept"
    echo "https_port $AWF_LINK_ADDRESS:3130 name=https_intercept_link intercept ssl-bump $tls"
  } >>"$out"
}

start_resolver() {
  python3 /usr/local/lib/awf/resolver.py "$CONF_DIR/resolver.json" &
  RESOLVER_PID=$!
  echo "$RESOLVER_PID" >/run/awf/resolver.pid  # awf-reload signals it (SIGHUP: new policy)
}

rotate_access_log() {
  # Squid keeps 5 rotated copies (logfile_rotate 5); ask it to rotate at 10 MB.
  while sleep 5; do
    if [[ $(stat -c %s /var/log/awf/access.jsonl 2>/dev/null || echo 0) -gt 10485760 ]]; then
      squid -k rotate -f "$CONF_DIR/squid.conf" || log "log rotation failed"
    fi
  done
}

run_squid() {
  squid -k parse -f "$CONF_DIR/squid.conf" 2>/tmp/squid-parse.log || {
    cat /tmp/squid-parse.log >&2; log "squid.conf does not parse"; exit 65; }
  log "starting squid"
  squid -N -f "$CONF_DIR/squid.conf" &
  SQUID_PID=$!
}

supervise() {
  # The resolver and Squid live and die together. If either ended while the
  # other ran on, its port would be free in a namespace the kernel shares: the
  # kernel could bind 5353 and answer Squid's lookups, or take an intercept
  # port. So the first to exit takes the whole proxy down (and with it every
  # way out); the provisioner then reports the kernel dead.
  trap 'kill -TERM "$RESOLVER_PID" "$SQUID_PID" 2>/dev/null; exit 0' TERM INT
  local code=0
  wait -n "$RESOLVER_PID" "$SQUID_PID" || code=$?
  log "resolver or squid exited ($code); stopping the proxy"
  kill -KILL "$RESOLVER_PID" "$SQUID_PID" 2>/dev/null || true
  exit 70
}

main() {
  refuse_second_run
  check_config
  link_listeners
  start_resolver
  rotate_access_log &
  run_squid
  supervise
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
