#!/usr/bin/env bash
# Runs commands at the same time: scripts/side-by-side.sh CMD [CMD...] (each CMD one shell word, run by bash -c).
# The first command's output comes as it is written; every other command writes to its own log, printed whole
# once the first has ended and that command has too, so no two outputs interleave. Fails if any command fails.
# `make test` runs the backend suites beside the add-on's suites: the backend's two workers leave a core
# partly idle while tests wait on sockets and subprocesses, and the add-on's tests mostly wait (BENCHMARKS.md
# "Test durations").
set -u
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for i in $(seq 2 $#); do
  cmd="${!i}"
  bash -c "$cmd" > "$logs/$i.log" 2>&1 &
  pids+=($!)
  echo "side by side: started \`$cmd\` (pid $!)"
done
waiting=("${pids[@]}")
# Interrupted: stop the commands not yet ended (scripts/test-addon.sh stops the backends it started, by PID).
trap 'for p in "${waiting[@]}"; do kill "$p" 2>/dev/null || true; done; exit 130' INT TERM
status=0
bash -c "$1" || status=1
echo "side by side: \`$1\` $([ $status = 0 ] && echo passed || echo FAILED)"
for j in "${!pids[@]}"; do
  i=$((j + 2))
  cmd="${!i}"
  if wait "${pids[$j]}"; then result=passed; else result=FAILED; status=1; fi
  waiting=("${waiting[@]:1}")
  echo "=== side by side: \`$cmd\` $result; its output: ==="
  cat "$logs/$i.log"
done
exit $status
