#!/usr/bin/env bash
# Stops servers started by start.sh:  bash localstack/stop.sh NAME|all
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="$here/.run"
target="${1:-all}"
shopt -s nullglob
for pidfile in "$run"/*.pid; do
  name="$(basename "$pidfile" .pid)"
  if [ "$target" = all ] || [ "$target" = "$name" ]; then
    pid="$(cat "$pidfile")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile" "$run/$name.port"
    if [ "$name" = seaweedfs ]; then rm -rf "$run/seaweedfs-data"; fi
    if [ "$name" = localstack ]; then rm -rf "$run/localstack-volume"; fi
  fi
done
exit 0
