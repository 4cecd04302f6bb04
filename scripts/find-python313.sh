#!/usr/bin/env bash
# Prints the path of a working Python 3.13 interpreter (for Blender 5.3's bpy), or nothing.
for cand in "${PYTHON313:-}" "$(command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.13.0 2>/dev/null)/bin/python3.13" \
            "$(command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.13 2>/dev/null)/bin/python3.13" python3.13; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
    command -v "$cand" 2>/dev/null || echo "$cand"
    exit 0
  fi
done
exit 0
