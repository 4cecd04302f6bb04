#!/usr/bin/env bash
# Runs the add-on's tests inside one Blender Python (the bpy module): scripts/test-addon.sh VENV [PYTEST ARGS]
# A crash of Blender fails the run like any failing test: the add-on must never crash it.
# Each backend the tests start leaves <pid>.pid in $DREAMPOLISH_TEST_PID_DIR while it runs
# (tests/support/blender_env.py): when the run ends, however it ends, exactly those processes that
# are still running are stopped, by PID.
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

"$venv/bin/python" -X faulthandler -m pytest tests/addon -q -p no:cacheprovider "${@:2}"
