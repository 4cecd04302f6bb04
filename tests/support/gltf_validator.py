"""The Khronos glTF validator (tools/gltf-validator, an npm package run by node) on .glb files.

`make test` installs it; where node or the package is missing the check skips, except under CI, where
it fails (CI must run it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gltf-validator"


def validate_glb(path: Path) -> dict:
    """The validator's report of `path`; fails the test when it reports any error."""
    node = shutil.which("node")
    if node is None or not (TOOL / "node_modules" / "gltf-validator").is_dir():
        message = "the Khronos glTF validator is not installed (make gltf-validator)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    run = subprocess.run([node, str(TOOL / "validate.cjs"), str(path)], capture_output=True, text=True, timeout=120)
    if run.returncode == 2 or not run.stdout.strip():
        pytest.fail(f"the validator could not run: {run.stderr}")
    report = json.loads(run.stdout)
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    assert report["issues"]["numErrors"] == 0, errors
    return report
