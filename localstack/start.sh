#!/usr/bin/env bash
# Starts one test server in the background on 127.0.0.1 and prints how to reach it.
#   bash localstack/start.sh moto|seaweedfs|azurite|localstack [PORT]
# Stop it with: bash localstack/stop.sh NAME   (or `all`)
# The test suite does not need this: it starts and stops its own servers. This is for the
# example binaries and for trying things by hand.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:?usage: start.sh moto|seaweedfs|azurite|localstack [PORT]}"
run="$here/.run"; mkdir -p "$run"
bucket="${DAKERA_BUCKET:-dakera}"
key="${AWS_ACCESS_KEY_ID:-dakera-local}"
secret="${AWS_SECRET_ACCESS_KEY:-dakera-local-secret}"

print_access() {
  echo "$name is listening on 127.0.0.1:$1 (pid $2, log $run/$name.log)"
  case "$name" in
    azurite)
      echo "repository URL: az://$bucket/<prefix>"
      echo "  export AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1 AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$1"
      ;;
    *)
      echo "repository URL: s3://$bucket/<prefix>"
      echo "  export AWS_ENDPOINT=http://127.0.0.1:$1 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret"
      ;;
  esac
}

# Already running: say so and how to reach it, and succeed (so `start.sh X && export ...`
# works when run twice).
if [ -f "$run/$name.pid" ] && kill -0 "$(cat "$run/$name.pid")" 2>/dev/null && [ -f "$run/$name.port" ]; then
  echo "$name is already running"
  print_access "$(cat "$run/$name.port")" "$(cat "$run/$name.pid")"
  exit 0
fi

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then echo "$name exited; see $run/$name.log"; exit 1; fi
    sleep 0.1
  done
  echo "$name did not open port $1; see $run/$name.log"; exit 1
}

case "$name" in
  moto)
    port="${2:-5000}"
    moto_server -H 127.0.0.1 -p "$port" >"$run/$name.log" 2>&1 & pid=$!
    wait_port "$port" "$pid"
    curl -fsS -X PUT "http://127.0.0.1:$port/$bucket" >/dev/null
    ;;
  seaweedfs)
    port="${2:-8333}"
    mkdir -p "$run/seaweedfs-data"
    AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" weed mini -dir="$run/seaweedfs-data" \
      -ip=127.0.0.1 -ip.bind=127.0.0.1 -webdav=false -admin.ui=false -bucket="$bucket" \
      -s3.port="$port" -s3.port.iceberg=0 -s3.port.lance=0 >"$run/$name.log" 2>&1 & pid=$!
    wait_port "$port" "$pid"
    sleep 2 # the bucket is created just after the port opens
    ;;
  localstack)
    port="${2:-4566}"
    [ -x "$here/.venv/bin/python" ] || { echo "LocalStack is not installed: run bash localstack/install.sh"; exit 1; }
    GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=s3 EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 DISABLE_EVENTS=1 \
      SKIP_SSL_CERT_DOWNLOAD=1 \
      LOCALSTACK_VOLUME_DIR="$run/localstack-volume" \
      "$here/.venv/bin/python" -m localstack.runtime.main >"$run/$name.log" 2>&1 & pid=$!
    wait_port "$port" "$pid"
    for _ in $(seq 1 100); do
      curl -fsS -X PUT "http://127.0.0.1:$port/$bucket" >/dev/null 2>&1 && break; sleep 0.3
    done
    ;;
  azurite)
    port="${2:-10000}"
    azurite-blob --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence --disableTelemetry \
      --skipApiVersionCheck >"$run/$name.log" 2>&1 & pid=$!
    wait_port "$port" "$pid"
    NODE_PATH="$(npm root -g)" node "$here/azurite-container.js" "http://127.0.0.1:$port/devstoreaccount1" "$bucket" >/dev/null
    ;;
  *) echo "unknown server $name (moto, seaweedfs, azurite, localstack)"; exit 2 ;;
esac
echo "$pid" >"$run/$name.pid"
echo "$port" >"$run/$name.port"
print_access "$port" "$pid"
