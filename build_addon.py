"""Build the installable DreamPolish Blender extension zip(s).

Steps:
  1. Stage the add-on sources from blender_addon/ under build/addon_src/.
  2. Vendor protocol/ into the staged package as its `protocol` subpackage (its imports are
     relative, so it works under the extension's module name); the command-line tool is left out.
  3. Fetch the pyzmq and msgpack wheels for every platform and Python that Blender uses
     (cached under .cache/wheels, so reruns work offline) and write the manifest's wheels list.
  4. Build one zip per platform with Blender's own extension tool (`blender_ext.py build
     --split-platforms`) and check each zip with its `validate` command.

Usage:
  python build_addon.py --blender-python .venv-blender/bin/python [--blender-python other/python ...]

Every interpreter given validates the zips; the first one builds them. Output goes to build/.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("build_addon")

REPO_ROOT = Path(__file__).resolve().parent
ADDON_SOURCE = REPO_ROOT / "blender_addon"
PROTOCOL_SOURCE = REPO_ROOT / "protocol"

# Files of blender_addon/ that are not part of the extension (test environments of the add-on).
ADDON_EXCLUDE = ("requirements-test*.txt", "__pycache__", "*.pyc")
# The protocol's command-line tool needs the backend side and is not used inside Blender.
PROTOCOL_EXCLUDE = ("cli.py", "__pycache__", "*.pyc")


@dataclass(frozen=True)
class WheelTarget:
    """One (platform, Python) pair that Blender ships and that the extension supports."""

    pip_platform: str
    """The `--platform` tag given to `pip download`."""
    python_version: str
    """The `--python-version` given to `pip download` (Blender 4.2-5.0: 3.11; 5.1+: 3.13)."""

    @property
    def cache_name(self) -> str:
        return f"{self.pip_platform}-py{self.python_version.replace('.', '')}"


@dataclass
class BuildConfig:
    """What to build and where."""

    blender_pythons: list[Path]
    """Interpreters with the `bpy` module; the first builds, all of them validate."""
    output_dir: Path = REPO_ROOT / "build"
    """Where the staged sources and the zips go."""
    wheel_cache: Path = REPO_ROOT / ".cache" / "wheels"
    """Downloaded wheels, one folder per target, so that a rebuild needs no network."""
    packages: tuple[str, ...] = ("pyzmq", "msgpack")
    """Wheels bundled with the extension (numpy ships with Blender)."""
    targets: list[WheelTarget] = field(
        default_factory=lambda: [
            WheelTarget(platform, py)
            for platform in ("manylinux_2_28_x86_64", "win_amd64", "macosx_11_0_arm64")
            for py in ("3.11", "3.13")
        ]
    )
    """Linux x86_64, Windows x64 and macOS arm64, each for CPython 3.11 and 3.13."""
    platforms: tuple[str, ...] = ("linux-x64", "windows-x64", "macos-arm64")
    """Blender platform names written to the manifest (one zip each with --split-platforms)."""


def _ignore(patterns: tuple[str, ...]):
    return shutil.ignore_patterns(*patterns)


def stage_sources(cfg: BuildConfig) -> Path:
    """Copy the add-on and the vendored protocol into a clean staging folder."""
    staging = cfg.output_dir / "addon_src"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(ADDON_SOURCE, staging, ignore=_ignore(ADDON_EXCLUDE))
    shutil.copytree(PROTOCOL_SOURCE, staging / "protocol", ignore=_ignore(PROTOCOL_EXCLUDE))
    log.info("staged sources in %s", staging)
    return staging


def fetch_wheels(cfg: BuildConfig) -> list[Path]:
    """Return the wheels for every target, downloading only those missing from the cache."""
    wheels: dict[str, Path] = {}
    for target in cfg.targets:
        folder = cfg.wheel_cache / target.cache_name
        folder.mkdir(parents=True, exist_ok=True)
        for package in cfg.packages:
            found = _cached_wheel(folder, package)
            if found is None:
                log.info("downloading %s for %s", package, target.cache_name)
                subprocess.run(
                    [
                        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--platform", target.pip_platform,
                        "--python-version", target.python_version, "--dest", str(folder), package,
                    ],
                    check=True,
                )
                found = _cached_wheel(folder, package)
                if found is None:
                    raise SystemExit(f"pip did not produce a {package} wheel for {target.cache_name}")
            # abi3 wheels serve several Pythons: keep each file once.
            wheels[found.name] = found
    return sorted(wheels.values(), key=lambda p: p.name)


def _cached_wheel(folder: Path, package: str) -> Path | None:
    # Wheel file names use the normalised project name (pyzmq-..., msgpack-...).
    matches = sorted(folder.glob(f"{package.replace('-', '_')}-*.whl"))
    return matches[-1] if matches else None


def write_manifest(staging: Path, wheels: list[Path], cfg: BuildConfig) -> None:
    """Copy the wheels beside the sources and fill the manifest's `wheels` and `platforms` lists."""
    wheel_dir = staging / "wheels"
    wheel_dir.mkdir()
    for w in wheels:
        shutil.copy2(w, wheel_dir / w.name)
    manifest_path = staging / "blender_manifest.toml"
    text = manifest_path.read_text(encoding="utf-8")
    wheels_toml = "wheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]"
    platforms_toml = "platforms = [" + ", ".join(f'"{p}"' for p in cfg.platforms) + "]"
    for key, value in (("wheels", wheels_toml), ("platforms", platforms_toml)):
        text, n = re.subn(rf"^{key} = \[[^\]]*\]", value, text, count=1, flags=re.MULTILINE)
        if n != 1:
            raise SystemExit(f"blender_manifest.toml must contain a top-level `{key} = []` line")
    manifest_path.write_text(text, encoding="utf-8")


def blender_ext_tool(blender_python: Path) -> Path:
    """Locate blender_ext.py inside the bpy package of an interpreter, without importing bpy."""
    out = subprocess.run(
        [str(blender_python), "-c",
         "import importlib.util as u; print(u.find_spec('bpy').submodule_search_locations[0])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    tools = sorted(Path(out).glob("[0-9]*.[0-9]*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not tools:
        raise SystemExit(f"no blender_ext.py inside the bpy package at {out}")
    return tools[-1]


def build_zips(cfg: BuildConfig, staging: Path) -> list[Path]:
    """Build one zip per platform with Blender's tool, replacing zips from earlier builds."""
    for old in cfg.output_dir.glob("dreampolish-*.zip"):
        old.unlink()
    tool = blender_ext_tool(cfg.blender_pythons[0])
    subprocess.run(
        [str(cfg.blender_pythons[0]), str(tool), "build", "--source-dir", str(staging),
         "--output-dir", str(cfg.output_dir), "--split-platforms"],
        check=True,
    )
    zips = sorted(cfg.output_dir.glob("dreampolish-*.zip"))
    if len(zips) != len(cfg.platforms):
        raise SystemExit(f"expected {len(cfg.platforms)} zips, got {[z.name for z in zips]}")
    return zips


def validate_zips(cfg: BuildConfig, zips: list[Path]) -> None:
    """Every given Blender's validator must accept every zip."""
    for python in cfg.blender_pythons:
        tool = blender_ext_tool(python)
        for z in zips:
            subprocess.run([str(python), str(tool), "validate", str(z)], check=True)
            log.info("%s accepted by %s", z.name, tool.parents[4].name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blender-python", action="append", type=Path, required=True,
                        help="an interpreter with the bpy module (repeat to validate with several Blenders)")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "build")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    pythons = [p for p in args.blender_python if p.exists()]
    missing = [p for p in args.blender_python if not p.exists()]
    for p in missing:
        log.warning("skipping %s: no such interpreter", p)
    if not pythons:
        raise SystemExit("no Blender Python interpreter found")
    cfg = BuildConfig(blender_pythons=pythons, output_dir=args.output_dir.resolve())
    cfg.output_dir.mkdir(parents=True, exist_ok=True)

    staging = stage_sources(cfg)
    write_manifest(staging, fetch_wheels(cfg), cfg)
    zips = build_zips(cfg, staging)
    validate_zips(cfg, zips)
    for z in zips:
        print(z.relative_to(REPO_ROOT) if z.is_relative_to(REPO_ROOT) else z)
    return 0


if __name__ == "__main__":
    sys.exit(main())
