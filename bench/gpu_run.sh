#!/usr/bin/env bash
# One prepared GPU benchmark run for a fresh GPU machine without network access.
#   bench/gpu_run.sh [REPORT_DIR]      (default: bench/out)
# Missing Python packages are installed from wheels in bench/wheels/ (see bench/fetch_gpu_wheels.sh).
# The whole run is bounded to about 18 minutes (each benchmark has its own time limit; the dry runs on
# the card come last and may be cut); a report file is written even when one of them fails.
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-bench/out}"
mkdir -p "$out"
report="$out/gpu_report.txt"
py="${PYTHON:-python3}"
: >"$report"
log() { echo "$*" | tee -a "$report"; }

log "# DreamPolish GPU benchmarks $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$report"

# 1. Install what the machine lacks, offline, from the wheels beside this script.
missing=$($py - <<'PY'
import importlib.util
mods = {"diffusers": "diffusers", "zmq": "pyzmq", "msgpack": "msgpack", "trimesh": "trimesh",
        "xatlas": "xatlas", "nvdiffrast": "diffrp-nvdiffrast", "skimage": "scikit-image"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  log "installing from bench/wheels: $missing"
  $py -m pip install -q --no-index --find-links bench/wheels $missing 2>&1 | tail -n 5 | tee -a "$report"
fi
$py -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -n 3 | tee -a "$report"

# 2. The benchmarks, each bounded; one JSON line per benchmark lands in the report.
run() {
  local limit="$1"; shift
  log ""
  log "## $*"
  timeout "$limit" "$py" "$@" 2>&1 | tee -a "$report"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || log "(exit $rc)"
}
run 120 bench/host_syncs.py --device cuda --steps 8 --report-every 4
run 90 bench/gpu_raster.py
run 60 bench/hashgrid.py
run 150 bench/gpu_guidance.py
run 200 bench/gpu_stages.py
# 3. The dry run on the card (issue 27): each stage two steps with full-size random-weight priors and idle
#    priors offloaded, the allocator's peak per stage (allocated_gb) beside the figures the CPU dry run
#    counted (backend/memory_figures.py: peak_gb offloaded, resident_peak_gb without offloading).
for preset in draft standard; do
  run 240 -m dreampolish.backend.cli dryrun --device cuda --preset "$preset" --option offload=priors
done
log ""
log "## dry run on the card against backend/memory_figures.py (GB; measured peak / table figure)"
$py - "$report" <<'PY' 2>&1 | tee -a "$report"
import json, sys
from dreampolish.backend.memory_figures import DRY_RUN_GB
for line in open(sys.argv[1]):
    if not line.startswith('{"preset"'):
        continue
    r = json.loads(line)
    table = DRY_RUN_GB.get(r["preset"], {}).get("priors", {})
    for stage, measured in r.get("allocated_gb", {}).items():
        print(f"{r['preset']:<9} {stage:<9} measured {measured:6.2f}  table {table.get(stage, float('nan')):6.2f}"
              f"  moved before it {r['moved_gb'].get(stage, 0):5.2f} GB")
    print(f"{r['preset']:<9} moving priors took {r.get('moving_seconds', 0):.2f} s in all")
PY
log ""
log "report: $report"
