#!/usr/bin/env bash
# Make a Docker engine available on a bare Debian machine (CI, a fresh dev box).
# Real users already have Docker; this script only fills the gaps a clean
# machine has: no engine installed, no daemon running, no registry for the
# base image. Each phase is a no-op when its job is already done.
set -euo pipefail

BASE_IMAGE="${AWF_BASE_IMAGE:-debian:bookworm-slim}"
LOG_DIR="${AWF_SETUP_LOG_DIR:-/var/log/awf-kernel-setup}"

log() { echo "[awf-setup] $*" >&2; }

apt_install() {
  if [[ -z "${_APT_UPDATED:-}" ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_engine() {
  # Debian's docker.io ships dockerd and a CLI that builds without buildx.
  if command -v dockerd >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; then
    return
  fi
  apt_install docker.io iptables
}

start_daemon() {
  if timeout 10 docker info >/dev/null 2>&1; then
    return
  fi
  mkdir -p "$LOG_DIR"
  log "starting dockerd (log: $LOG_DIR/dockerd.log)"
  nohup dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    if timeout 5 docker info >/dev/null 2>&1; then
      log "dockerd is up"
      return
    fi
    sleep 1
  done
  log "dockerd did not come up; last log lines:"
  tail -20 "$LOG_DIR/dockerd.log" >&2 || true
  exit 1
}

make_base_image() {
  # No registry here: build the Dockerfiles' FROM image from the Debian
  # mirror apt already uses, so `FROM debian:bookworm-slim` needs no pull.
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  if timeout 60 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
    log "pulled $BASE_IMAGE"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local mirror root
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  mirror="${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  root="$(mktemp -d /tmp/awf-base.XXXXXX)"
  log "debootstrap bookworm from $mirror (no registry reachable)"
  if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1; then
    tail -20 "$root.log" >&2
    rm -rf "$root" "$root.log"
    exit 1
  fi
  # Keep the image small and apt-ready, like the registry image.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root" "$root.log"
  log "created $BASE_IMAGE locally"
}

main() {
  install_engine
  start_daemon
  make_base_image
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
