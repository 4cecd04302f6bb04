#!/usr/bin/env bash
# Runs the add-on's tests inside one Blender Python (the bpy module): scripts/test-addon.sh VENV [FILES] [PYTEST ARGS]
# A crash of Blender fails the run like any failing test: the add-on must never crash it.
# Each backend the tests start leaves <pid>.pid in $DREAMPOLISH_TEST_PID_DIR while it runs
# (tests/support/blender_env.py): when the run ends, however it ends, exactly those processes that
# are still running are stopped, by PID.
set -u
venv="$1"
pid_dir=$(mktemp -d)
export DREAMPOLISH_TEST_PID_DIR="$pid_dir"
# One torch thread in every backend the tests start, as the backend's own suites run: `make test` runs these
# beside the backend's workers, and torch's default two threads a process on a busy two-core machine made a
# tiny job 8-9 times slower (PITFALLS) — a loaded fresh-clone run timed out 16 real-pipeline tests that way.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
trap 'stop_left_backends; rm -rf "$pid_dir"' EXIT

stop_left_backends() {
  for f in "$pid_dir"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    # A PID can be reused once its process is gone: stop it only if it is still a backend.
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "dreampolish-backend serve"; then
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

# Test files or folders named after the environment replace tests/addon (scripts/test-addon.sh VENV
# tests/addon/test_udim.py); any other argument goes to pytest as it is (-k EXPR, -m "not slow").
targets=()
for arg in "${@:2}"; do
  case "$arg" in tests/*) targets+=("$arg") ;; esac
done
[ ${#targets[@]} -gt 0 ] || targets=(tests/addon)
args=()
for arg in "${@:2}"; do
  case "$arg" in tests/*) ;; *) args+=("$arg") ;; esac
done
"$venv/bin/python" -X faulthandler -m pytest "${targets[@]}" -q -p no:cacheprovider ${args[@]+"${args[@]}"}
