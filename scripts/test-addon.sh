#!/usr/bin/env bash
# Runs the add-on's tests inside one Blender Python (the bpy module): scripts/test-addon.sh VENV
# Blender itself has crashed (SIGSEGV) once in many runs while a test drove it and the add-on's
# client thread was decoding a message; a crash is not a test verdict, so the suite is run once
# more after a crash, and says so. Failing assertions are never retried.
# Each backend the tests start leaves <pid>.pid in $DREAMPOLISH_TEST_PID_DIR while it runs
# (tests/addon/blender_env.py): after a crash exactly those processes are stopped, by PID.
set -u
venv="$1"
pid_dir=$(mktemp -d)
export DREAMPOLISH_TEST_PID_DIR="$pid_dir"
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

run() { "$venv/bin/python" -X faulthandler -m pytest tests/addon -q -p no:cacheprovider "${@:2}"; }
run "$@"
rc=$?
if [ "$rc" -ge 128 ]; then
  echo "NOTE: Blender crashed (exit $rc, signal $((rc - 128))) during the add-on tests; running them once more"
  stop_left_backends
  run "$@"
  rc=$?
fi
exit "$rc"
