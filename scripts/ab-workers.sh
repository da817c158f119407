#!/usr/bin/env bash
# ab-workers.sh A B [RUNS]: the worker CPU per query of two builds, side by side.
#
# Each run is one pipeline run of `make bench-cost`'s (20000 rows x 1 query, 2 workers x
# 256 slots, llmsim at 0 latency) with one worker of build A and one of build B in the
# same stack, fetching from the same queue at the same time: what the machine does to
# one (other load, a slower minute) it does to the other, so their difference is the
# builds'. For each worker it prints the results it published (its /metrics) and its CPU
# (user + system, /proc) from its first result to its last (start-up and idle time left
# out), and the CPU per result; then the median of B - A. A and B are
# bin directories (make build's bin, or a copy of it from another commit); the rest of
# the stack (nats-server, llmsim, collector, producer, mqbench) runs from A.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 BIN_A BIN_B [RUNS]" >&2
  exit 2
fi
A=$(cd "$1" && pwd)
B=$(cd "$2" && pwd)
RUNS=${3:-4}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/runs"
for f in "$A"/*; do ln -s "$f" "$work/bin/"; done
rm "$work/bin/worker"

# The worker mqbench starts: in odd runs the first is A's and the second B's, in even
# runs the other way round (the first started is not quite the second's twin: each
# takes turns). A scraper writes "<build> <results> <cpu ticks>" every 0.2 s until the
# worker exits.
cat >"$work/bin/worker" <<EOF
#!/usr/bin/env bash
d="$work/runs"
n=\$(flock "\$d/lock" bash -c 'n=\$(cat "\$0/count" 2>/dev/null || echo 0); echo \$((n + 1)) >"\$0/count"; echo \$n' "\$d")
if [ \$(( (n + \$(cat "\$d/run")) % 2 )) = 1 ]; then bin="$A"; tag=A; else bin="$B"; tag=B; fi
port=\$((20000 + RANDOM % 20000))
while (exec 3<>"/dev/tcp/127.0.0.1/\$port") 2>/dev/null; do port=\$((port + 1)); done
me=\$\$
( while kill -0 \$me 2>/dev/null; do
    r=\$(curl -s --max-time 1 "127.0.0.1:\$port/metrics" | awk '/^mq_worker_results_total/ {s += \$2} END {print s + 0}')
    t=\$(awk '{print \$14 + \$15}' /proc/\$me/stat 2>/dev/null) || true
    [ -n "\$t" ] && echo "\$r \$t" >>"\$d/samples.\$tag"
    sleep 0.1
  done ) >/dev/null 2>&1 &
exec "\$bin/worker" "\$@" --ops-addr "127.0.0.1:\$port"
EOF
chmod +x "$work/bin/worker"

tck=$(getconf CLK_TCK)
diffs=()
for i in $(seq 1 "$RUNS"); do
  rm -f "$work/runs/"samples.* "$work/runs/count"
  echo "$i" >"$work/runs/run"
  "$A/mqbench" --bin "$work/bin" --cost --rounds 1 --raw-jobs 2000 --shapes 20000x1 \
    --cost-latency=false --cost-demo=false >"$work/runs/bench.$i.log" 2>&1 ||
    { cat "$work/runs/bench.$i.log" >&2; exit 1; }
  sleep 0.5
  line="run $i:"
  if [ ! -s "$work/runs/samples.A" ] || [ ! -s "$work/runs/samples.B" ]; then
    echo "run $i: a worker left no samples (its metrics never answered); run left out" >&2
    continue
  fi
  declare -A per=()
  for tag in A B; do
    # From the last sample with no result to the first with the final count.
    read -r results ticks < <(awk 'NR == FNR { last = $1; next }
      $1 == 0 { r0 = $1; t0 = $2 } $1 == last && !done { r1 = $1; t1 = $2; done = 1 }
      END { print r1 - r0, t1 - t0 }' "$work/runs/samples.$tag" "$work/runs/samples.$tag")
    per[$tag]=$((ticks * 1000000 / tck / results))
    line+=" $tag $results results, $((ticks * 1000 / tck)) ms CPU, ${per[$tag]} µs/result;"
  done
  diffs+=($((per[B] - per[A])))
  echo "$line B - A ${diffs[-1]} µs"
  unset per
done
if [ ${#diffs[@]} = 0 ]; then
  echo "no run measured" >&2
  exit 1
fi
sorted=($(printf '%s\n' "${diffs[@]}" | sort -n))
echo "B - A over ${#diffs[@]} runs, µs per result: median ${sorted[$((${#diffs[@]} / 2))]}, min ${sorted[0]}, max ${sorted[-1]}"
