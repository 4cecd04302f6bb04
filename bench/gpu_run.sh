#!/usr/bin/env bash
# One prepared GPU benchmark run for a fresh GPU machine without network access.
#   bench/gpu_run.sh [REPORT_DIR]      (default: bench/out)
# Missing Python packages are installed from wheels in bench/wheels/ (see bench/fetch_gpu_wheels.sh).
# The whole run is bounded to about 8 minutes; each benchmark has its own time limit, and a report
# file is written even when one of them fails.
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
log ""
log "report: $report"
