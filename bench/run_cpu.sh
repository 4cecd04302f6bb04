#!/usr/bin/env bash
# Every CPU benchmark, one after the other (`make bench`). Each prints a table and ends with one JSON
# line; those lines are collected in bench/out/cpu_report.jsonl.
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p bench/out
report=bench/out/cpu_report.jsonl
: >"$report"
py=.venv/bin/python
bpy_py=.venv-blender/bin/python
status=0
run() {
  echo; echo "== $*"
  local log; log=$(mktemp)
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  grep -E '^\{.*"benchmark"' "$log" | tail -n 1 >>"$report"
  rm -f "$log"
  [ "$rc" = 0 ] || { echo "(exit $rc)"; status=1; }
}
run $py bench/transport.py
run $bpy_py bench/blender_import.py
run $py bench/cpu_stages.py
for script in bench/fidelity.py bench/guidance_toy2d.py bench/pipeline_oracle.py bench/materials_oracle.py; do
  [ -f "$script" ] && run $py "$script"
done
run $py bench/store_faults.py
run $py bench/raster_cpu.py
run $py bench/hashgrid.py
run $py bench/gpu_raster.py
# The micro priors' ablation on held-out prompts (backend/micro/): about 45 minutes on two cores.
run $py bench/micro_ablation.py --bug
echo; echo "JSON lines: $report"
exit $status
