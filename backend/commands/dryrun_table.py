"""backend/memory_figures.py from the dry run's reports: `python -m dreampolish.backend.commands.dryrun_table
bench/dryrun/*.json > backend/memory_figures.py`.

Each report is the last line `dreampolish-backend dryrun --preset NAME [--option offload=priors] [--geometry
small]` printed (every stage ok); the table holds each preset's peak per stage, without and with offloading
(an offload=priors report holds both).
tests/backend/test_memory_figures.py checks that the committed table is what this makes of the committed
reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = '''"""Peak GPU memory in GB per preset, offloading (none / priors) and stage: `dreampolish-backend dryrun`
(GEOMETRY below says at which sizes) with the PyTorch rasteriser, whose figure bounds nvdiffrast's from
above (the dry run cannot run nvdiffrast). GENERATED from bench/dryrun/*.json by
backend/commands/dryrun_table.py; do not edit by hand (tests/backend/test_memory_figures.py checks it
against those reports). Read by backend/memory_check.py."""

'''


def geometry(reports: list[dict[str, Any]]) -> dict[str, str]:
    """{preset: "full" | "small"}: the geometry each preset's figures come from (full where there is a
    full-geometry report; a small-geometry one counts the priors at full size and the stages' own work at
    the tiny preset's sizes, so its figures are lower bounds)."""
    out: dict[str, str] = {}
    for report in reports:
        if out.get(report["preset"]) != "full":
            out[report["preset"]] = report["geometry"]
    return dict(sorted(out.items()))


def table(reports: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{preset: {"none" | "priors": {stage: peak GB}}}, presets and offload modes sorted, stages in order;
    a preset's full-geometry report wins over a small-geometry one."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    chosen = geometry(reports)
    for report in reports:
        if report.get("geometry") not in ("full", "small") or report.get("options", {}).keys() - {"offload"}:
            raise ValueError(f"{report.get('preset')}: only reports without options but offload make the table")
        if report["geometry"] != chosen[report["preset"]]:
            continue
        if not all(stage["ok"] for stage in report["stages"].values()):
            raise ValueError(f"{report['preset']}: a stage failed in the dry run; its figures cannot be used")
        runs = out.setdefault(report["preset"], {})
        # An offloaded run counts what the card would hold without offloading as well (resident_peak_gb,
        # commands/dryrun.LiveBytes.host): one report gives both figures.
        key = "resident_peak_gb" if report["offload"] == "priors" else "peak_gb"
        runs["none"] = {s: e[key] for s, e in report["stages"].items()}
        if report["offload"] == "priors":
            runs["priors"] = {s: e["peak_gb"] for s, e in report["stages"].items()}
    return {p: dict(sorted(modes.items())) for p, modes in sorted(out.items())}


def render(reports: list[dict[str, Any]]) -> str:
    """The text of backend/memory_figures.py."""
    body = json.dumps(table(reports), indent=4)
    kinds = json.dumps(geometry(reports), indent=4)
    return (f"{HEADER}DRY_RUN_GB: dict[str, dict[str, dict[str, float]]] = {body}\n\n"
            f"GEOMETRY: dict[str, str] = {kinds}\n"
            '"""Per preset: "full" (the preset\'s own sizes) or "small" (the stages\' own work at the tiny preset\'s\n'
            'sizes, the priors at full size: the figures are lower bounds)."""\n')


def read_reports(paths: list[Path]) -> list[dict[str, Any]]:
    """The JSON report in each file (its last line that is a JSON object: a saved dry-run log works too)."""
    reports = []
    for path in paths:
        lines = [line for line in Path(path).read_text().splitlines() if line.startswith("{")]
        reports.append(json.loads(lines[-1]))
    return reports


if __name__ == "__main__":
    sys.stdout.write(render(read_reports([Path(p) for p in sys.argv[1:]])))
