#!/usr/bin/env bash
# [awf-firewall] The pod's init step: runs once, as root holding only
# NET_ADMIN, in the proxy's network namespace, before any kernel code exists.
# It waits for the proxy to listen, pins the pod's routes and installs the
# rendered iptables rules. Any failure exits non-zero, and then no kernel starts.
#
# Inputs (environment, rendered by awf_kernel.render.firewall):
#   AWF_IPV4_RULES / AWF_IPV6_RULES  iptables-restore input, with the
#                                    placeholders @EGRESS_IF@ and @INGRESS_IF@;
#                                    a line with @UPSTREAM@ is repeated for each
#                                    IPv4 nameserver of /etc/resolv.conf (the
#                                    proxy's, shared in this namespace)
#   AWF_EGRESS_IP / AWF_INGRESS_IP   the pod's address on each network
#   AWF_DEFAULT_GW                   the egress gateway, or "none"
#   AWF_WAIT_TCP / AWF_WAIT_UDP      ports the proxy must listen on first
#   AWF_LINK_IF / AWF_LINK_PEER_IF / AWF_LINK_ADDRESS
#                                    routed pods only (a kernel runtime with its
#                                    own network stack): make the kernel's link,
#                                    a veth pair whose far end goes to the
#                                    namespace of pid 1 (this step shares the
#                                    holder's pid namespace), and address ours
set -euo pipefail

log() { echo "[awf-firewall] $*" >&2; }

wait_for_proxy() {
  local deadline=$((SECONDS + ${AWF_WAIT_SECONDS:-20})) port
  for port in ${AWF_WAIT_TCP:-}; do
    until ss -Hltn "sport = :$port" | grep -q .; do
      (( SECONDS < deadline )) || { log "proxy not listening on tcp/$port"; exit 70; }
      sleep 0.05
    done
  done
  for port in ${AWF_WAIT_UDP:-}; do
    until ss -Hlun "sport = :$port" | grep -q .; do
      (( SECONDS < deadline )) || { log "resolver not listening on udp/$port"; exit 70; }
      sleep 0.05
    done
  done
}

iface_of() {
  # Docker names interfaces by connection order; find ours by address instead.
  local ip="$1" ifname
  ifname=$(ip -o -4 addr show | awk -v ip="$ip" '{split($4, a, "/"); if (a[1] == ip) print $2}')
  [[ -n "$ifname" ]] || { log "no interface has address $ip"; exit 71; }
  echo "$ifname"
}

pin_routes() {
  # Only the egress network may carry traffic out. With an internal egress
  # network there is no gateway at all, so drop the ingress network's default
  # route rather than leave a way out that only the rules below would close.
  if ip route show default | grep -q .; then ip route del default; fi
  if [[ "${AWF_DEFAULT_GW:-none}" != "none" ]]; then
    ip route add default via "$AWF_DEFAULT_GW" dev "$EGRESS_IF"
  fi
}

expand_upstreams() {
  # Lines naming @UPSTREAM@ exist only when the admin named no dns_servers:
  # the resolver then forwards to the nameservers Docker gave the proxy.
  local line ns servers
  servers=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ {print $2}' /etc/resolv.conf 2>/dev/null || true)
  while IFS= read -r line; do
    if [[ "$line" == *@UPSTREAM@* ]]; then
      for ns in $servers; do printf '%s\n' "${line//@UPSTREAM@/$ns}"; done
    else
      printf '%s\n' "$line"
    fi
  done
}

install_rules() {
  local v4 v6
  v4="$(printf '%s\n' "$AWF_IPV4_RULES" | expand_upstreams)"
  v4="${v4//@EGRESS_IF@/$EGRESS_IF}"
  v4="${v4//@INGRESS_IF@/$INGRESS_IF}"
  # --noflush: Docker keeps its embedded-DNS rules in this namespace too.
  printf '%s\n' "$v4" | iptables-restore --noflush
  if [[ -n "${AWF_IPV6_RULES:-}" ]]; then
    v6="${AWF_IPV6_RULES//@EGRESS_IF@/$EGRESS_IF}"
    v6="${v6//@INGRESS_IF@/$INGRESS_IF}"
    printf '%s\n' "$v6" | ip6tables-restore --noflush
  fi
}

make_link() {
  # The kernel's only interface: its end is configured there by awf-link.
  [[ -n "${AWF_LINK_IF:-}" ]] || return 0
  ip link add "$AWF_LINK_IF" type veth peer name "${AWF_LINK_PEER_IF:?}" netns 1
  ip addr add "${AWF_LINK_ADDRESS:?}" dev "$AWF_LINK_IF"
  ip link set "$AWF_LINK_IF" up
}

main() {
  make_link
  wait_for_proxy
  EGRESS_IF=$(iface_of "$AWF_EGRESS_IP")
  INGRESS_IF=$(iface_of "${AWF_INGRESS_IP:-$AWF_EGRESS_IP}")
  pin_routes
  install_rules
  log "rules installed (egress $EGRESS_IF, ingress $INGRESS_IF)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
