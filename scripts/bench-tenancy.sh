#!/usr/bin/env bash
# Cost of API keys, limits and usage metering on the serving hot path: `bitnet loadtest` on the
# tiny model (max_tokens 1, 64 connections — the headline case of scripts/bench-serve.sh)
# against `bitnet serve` open vs `--auth` (SQLite, a key with RPM/TPM/parallel/budget limits
# that never bind, so every check and charge runs), alternating, REPS times each; optionally
# also PostgreSQL + Redis (--with-services). Prints requests/s per run and the ratio.
# Usage: scripts/bench-tenancy.sh [REPS=3] [--with-services]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-rust-target}"
REPS=${1:-3}
with_services=0
[ "${2:-}" = "--with-services" ] && with_services=1
OUT=${OUT:-target/bench-tenancy}
FIXTURES=${BITNET_FIXTURES:-../shared/fixtures}
MODEL=$FIXTURES/bitnet-tiny-packed
PG=${BITNET_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${BITNET_TEST_REDIS:-redis://127.0.0.1:6379}
mkdir -p "$OUT"
cargo build --release --locked -q -p bitnet-cli
B=$CARGO_TARGET_DIR/release/bitnet
PORT=${PORT:-18095}
URL=http://127.0.0.1:$PORT
data=$(mktemp -d)
srv_pid=""
stop() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null; srv_pid=""; }
trap 'stop; rm -rf "$data"' EXIT
start() {
  "$B" serve --model "$MODEL" --port "$PORT" --max-batch 64 --max-queue 256 "$@" >"$OUT/serve.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 1 120); do
    curl -sf "$URL/ready" >/dev/null && return 0
    kill -0 "$srv_pid" 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
    sleep 0.25
  done
  echo "server did not become ready"; exit 1
}
key() { # database url -> secret of a key whose limits never bind
  "$B" admin --database-url "$1" tenant create "bench-$$-$RANDOM" >/dev/null 2>&1 || true
  local t; t=$("$B" admin --database-url "$1" tenant list | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  "$B" admin --database-url "$1" key create --tenant "$t" --rpm 1000000000 --tpm 1000000000000 \
    --max-parallel 100000 --budget-tokens 1000000000000 --budget-period monthly 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}
run() { # label, loadtest extra args...
  local label=$1; shift
  "$B" loadtest --url "$URL" --concurrency 64 --duration 10 --max-tokens 1 --prompt Hi \
    --json "$OUT/$label.json" "$@" >/dev/null
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%12s: %8.0f req/s  P99 e2e %6.1f ms  failed %d" % (sys.argv[2], d["request_throughput"], d["p99_e2el_ms"], d["failed"]))' "$OUT/$label.json" "$label"
}
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
sqlite="sqlite://$data/bitnet.db"
skey=$(key "$sqlite")
for r in $(seq 1 "$REPS"); do
  start; run "open-$r"; stop
  start --database-url "$sqlite" --journal-dir "$data/journal"; run "sqlite-$r" --api-key "$skey"; stop
  if [ $with_services = 1 ]; then
    pkey=${pkey:-$(key "$PG")}
    start --database-url "$PG" --redis-url "$REDIS" --journal-dir "$data/journal-pg"; run "pg-redis-$r" --api-key "$pkey"; stop
  fi
done
python3 - "$OUT" "$REPS" "$with_services" <<'PY'
import json, statistics, sys
out, reps, svc = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
def rs(label):
    return [json.load(open(f"{out}/{label}-{r}.json"))["request_throughput"] for r in range(1, reps + 1)]
o = rs("open")
print(f"\nopen server:               {statistics.mean(o):8.0f} req/s (mean of {reps})")
for label, name in [("sqlite", "auth + limits + metering, SQLite"), ("pg-redis", "auth + limits in Redis, PostgreSQL")]:
    if label == "pg-redis" and not svc:
        continue
    v = rs(label)
    print(f"{name:<26} {statistics.mean(v):8.0f} req/s = {statistics.mean(v) / statistics.mean(o) * 100:5.1f} % of open")
PY
