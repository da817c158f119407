#!/usr/bin/env bash
# make demo: a real NATS server with JetStream (built from the nats-server module), the
# LLM simulator, two workers, the collector and the producer on examples/assessment.
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DEMO=${DEMO_DIR:-.demo}
OUT=${OUT:-out}
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() { # first port from $1 on that nothing listens on
  local p=$1
  while port_open 127.0.0.1 "$p"; do p=$((p + 1)); done
  echo "$p"
}
# listener_pids PORT: the pids listening on PORT (ss, else lsof, else /proc).
listener_pids() {
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
  elif command -v lsof >/dev/null 2>&1; then
    lsof -nP -iTCP:"$1" -sTCP:LISTEN -t 2>/dev/null | sort -u
  else # no ss nor lsof (a minimal image): the socket's inode from /proc/net, then its owner
    local hex inodes ino fd
    hex=$(printf '%04X' "$1")
    inodes=$(awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {print $10}' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    for ino in $inodes; do
      for fd in /proc/[0-9]*/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$ino]" ] && { fd=${fd#/proc/}; echo "${fd%%/*}"; }
      done
    done | sort -u
  fi
}
# require_free PORT NAME: a port chosen (or given) for NAME must not be taken already,
# or the demo would run against whatever answers there.
require_free() {
  if port_open 127.0.0.1 "$1"; then
    echo "demo: port $1 for $2 is already in use (pid: $(listener_pids "$1" | tr '\n' ' ')); stop that process or choose another port" >&2
    exit 1
  fi
}
NATS_PORT=${NATS_PORT:-$(free_port 14222)}
SIM_ADDR=${SIM_ADDR:-127.0.0.1:$(free_port 18081)}
require_free "$NATS_PORT" nats-server
require_free "${SIM_ADDR#*:}" llmsim
# A token this demo sets and checks, so that it never talks to another NATS server.
TOKEN="mq-demo-$$-$RANDOM"
EXAMPLE=${EXAMPLE:-examples/assessment}

rm -rf "$DEMO"
mkdir -p "$DEMO/logs" "$OUT"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

wait_port() { # host port name pid: wait until the process we started (and only it) listens
  for _ in $(seq 1 100); do
    kill -0 "$4" 2>/dev/null || { echo "demo: $3 exited; see $DEMO/logs" >&2; exit 1; }
    if port_open "$1" "$2"; then
      local pids
      pids=$(listener_pids "$2") || exit 1
      if [ "$pids" != "$4" ]; then
        echo "demo: port $2 answers from pid ${pids:-unknown}, not from the $3 this demo started (pid $4): refusing to run against another process" >&2
        exit 1
      fi
      return 0
    fi
    sleep 0.1
  done
  echo "demo: $3 did not start; see $DEMO/logs" >&2; exit 1
}

nats_server_name() { # port: the server_name of the NATS server's INFO line
  local info
  info=$(exec 3<>"/dev/tcp/127.0.0.1/$1" && timeout 5 head -n 1 <&3) || return 1
  sed -n 's/.*"server_name":"\([^"]*\)".*/\1/p' <<<"$info"
}

echo "demo: starting nats-server (JetStream, store $DEMO/nats) on 127.0.0.1:$NATS_PORT"
"$BIN/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DEMO/nats" -n "$TOKEN" >"$DEMO/logs/nats.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$NATS_PORT" nats-server "${pids[-1]}"
if [ "$(nats_server_name "$NATS_PORT")" != "$TOKEN" ]; then
  echo "demo: the NATS server on port $NATS_PORT is not the one this demo started (server name is not $TOKEN)" >&2
  exit 1
fi
export NATS_URL="nats://127.0.0.1:$NATS_PORT"

echo "demo: starting llmsim on $SIM_ADDR (50 ms latency, 5 % injected 429s)"
"$BIN/llmsim" --addr "$SIM_ADDR" --latency 50ms --jitter 50ms --fault 429=5 --injected-retry-after 200ms >"$DEMO/logs/llmsim.log" 2>&1 &
pids+=($!)
wait_port "${SIM_ADDR%:*}" "${SIM_ADDR#*:}" llmsim "${pids[-1]}"
export LLM_ENDPOINT="http://$SIM_ADDR/v1"

# The example's worker config reads its key from OPENAI_API_KEY; llmsim accepts any key,
# so the demo's workers get a dummy one (never a key of yours from the environment).
for i in 1 2; do
  OPENAI_API_KEY=llmsim-accepts-any-key "$BIN/worker" --config "$EXAMPLE/worker.yaml" --concurrency 32 --name "demo-worker-$i" --ops-addr "" >"$DEMO/logs/worker-$i.log" 2>&1 &
  pids+=($!)
done
"$BIN/collector" --out "$OUT" --csv --ops-addr "" >"$DEMO/logs/collector.log" 2>&1 &
pids+=($!)
echo "demo: 2 workers and the collector are up; producing $EXAMPLE/rows.csv"

set +e
"$BIN/producer" --config "$EXAMPLE/pipeline.yaml" --input "$EXAMPLE/rows.csv" --wait --wait-timeout 5m --log-level warn | tee "$DEMO/producer.out"
rc=${PIPESTATUS[0]}
set -e
run=$(sed -n 's/^run \([^:]*\):.*/\1/p' "$DEMO/producer.out" | head -1)
if [ "$rc" -ne 0 ] || [ -z "$run" ]; then
  echo "demo: producer failed (exit $rc); logs in $DEMO/logs" >&2
  exit 1
fi
echo
echo "demo: summary ($OUT/$run/summary.json):"
cat "$OUT/$run/summary.json"
echo
echo "demo: outputs:"
for f in results.jsonl errors.jsonl results.csv errors.csv; do
  printf '  %-28s %5d lines\n' "$OUT/$run/$f" "$(wc -l <"$OUT/$run/$f")"
done
stats=$(curl -s "http://$SIM_ADDR/stats" 2>/dev/null || true)
echo "demo: llmsim counters: $(printf '%s' "$stats" | head -c 400)"
# The summary's calls and tokens are what the provider billed: they must equal llmsim's
# own counters exactly.
num() { printf '%s' "$1" | tr -d ' \n' | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
summary=$(cat "$OUT/$run/summary.json")
for pair in calls:requests prompt_tokens:prompt_tokens completion_tokens:completion_tokens; do
  ours=$(num "$summary" "${pair%%:*}"); theirs=$(num "$stats" "${pair#*:}")
  if [ -z "$ours" ] || [ "$ours" != "$theirs" ]; then
    echo "demo: summary ${pair%%:*} = ${ours:-?} but llmsim counted ${pair#*:} = ${theirs:-?}" >&2
    exit 1
  fi
done
echo "demo: summary calls and tokens equal llmsim's counters (what the provider billed)"
echo
echo "demo: first result row:"
head -c 600 "$OUT/$run/results.jsonl"; echo " ..."
