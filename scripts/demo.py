"""`make demo`: the whole product on this machine, with real parts.

1. choose the preset (draft on a CUDA GPU with the real model weights present, micro otherwise: the
   micro priors that ship with the project, trained on renders of a procedural world) and, when none
   is given, a prompt the preset's priors know;
2. start the real backend (`dreampolish-backend serve`) on a free loopback port, in the background;
3. run scripts/blender_demo.py inside Blender's Python (the `bpy` module) with the built extension:
   generate from the prompt through the add-on's operators, import every stage, bake to material,
   save the .blend, render a Cycles turntable into a contact sheet;
4. stop the backend (always, also on failure) and print where everything is.

Each run uses a fresh port and job store, so running it twice in a row works.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("dreampolish.demo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_preset(requested: str) -> tuple[str, str]:
    """-> (preset, why)."""
    if requested != "auto":
        return requested, "asked for"
    import torch

    micro = ("the micro priors on the CPU: small models trained on renders of procedural objects, which know "
             "only their world's shapes and colours (an instrument for the CPU demo and tests, not the real models)")
    if not torch.cuda.is_available():
        return "micro", "no CUDA GPU here: " + micro
    check = subprocess.run(
        [sys.executable, "-m", "dreampolish.backend.cli", "models", "check"],
        capture_output=True, text=True, cwd=REPO,
    )
    if check.returncode != 0:
        return "micro", "a CUDA GPU is here but the real model weights are not (run `dreampolish-backend models pull`): " + micro
    return "draft", f"CUDA GPU ({torch.cuda.get_device_name(0)}) and model weights present"


DEFAULT_PROMPT = "a ceramic teapot with a blue glaze"
"""The prompt when none is given, for presets with the real priors."""
MICRO_DEFAULT_PROMPT = "a red cone"
"""The micro priors' default: a pair of their world held out of their training (backend/micro/world.py), whose
shape the micro chain makes well (BENCHMARKS.md, "Micro priors": the green torus comes out without its hole)."""


def choose_prompt(requested: str | None, preset: str) -> str:
    if preset != "micro":
        return requested or DEFAULT_PROMPT
    from dreampolish.backend.micro.world import COLOURS, SHAPES, parse_prompt

    if not requested:
        return MICRO_DEFAULT_PROMPT
    if parse_prompt(requested) is None:
        log.warning("the micro priors know one colour (%s) and one shape (%s) per prompt; %r names none of "
                    "each, so its result will not follow it", ", ".join(COLOURS), ", ".join(SHAPES), requested)
    return requested


def prepare_models(preset: str) -> None:
    """The tiny preset's models are built here (seconds, no network); real ones come from `models pull`."""
    if preset != "tiny":
        return
    log.info("building the tiny models (once; cached)")
    subprocess.run([sys.executable, "-m", "dreampolish.backend.cli", "--log-level", "WARNING", "models", "pull",
                    "--tiny"], cwd=REPO, check=True)


def wait_for_backend(address: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Block until the backend answers the handshake (or has died), so Blender connects first time."""
    from dreampolish.protocol.client import BackendClient, BackendUnreachable

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited with code {proc.returncode} before it was ready")
        try:
            with BackendClient(address, timeout_s=2.0) as client:
                welcome = client.connect()
                log.info("backend ready on %s (devices: %s)", address, ", ".join(welcome.devices))
                return
        except BackendUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_backend(address: str, store: Path, preset: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "dreampolish.backend.cli", "serve", "--bind", address, "--store", str(store),
           "--preset", preset]
    log.info("starting the backend: %s", " ".join(cmd[1:]))
    with open(log_path, "wb") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_backend(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="", help="the prompt (default: one the chosen preset's priors know)")
    p.add_argument("--preset", default="auto", help="auto, micro, tiny, draft, standard or high")
    p.add_argument("--seed", type=int, default=0,
                   help="the job's seed (0: the micro quality test's; the micro chain's cone depends on it, BENCHMARKS.md)")
    p.add_argument("--blender-python", default=str(REPO / ".venv-blender" / "bin" / "python"))
    p.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--samples", type=int, default=16)
    args = p.parse_args(argv)

    zips = sorted((REPO / "build").glob("dreampolish-*-linux_x64.zip"))
    if not zips:
        log.error("no built extension in build/: run `make addon` first")
        return 2
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store = out / "store"

    preset, why = choose_preset(args.preset)
    log.info("preset %s: %s", preset, why)
    args.prompt = choose_prompt(args.prompt, preset)
    prepare_models(preset)
    address = f"tcp://127.0.0.1:{free_port()}"
    backend = start_backend(address, store, preset, out / "backend.log")
    t0 = time.monotonic()
    try:
        wait_for_backend(address, backend)
        blender = subprocess.run(
            [args.blender_python, str(REPO / "scripts" / "blender_demo.py"), "--zip", str(zips[-1]),
             "--backend", address, "--prompt", args.prompt, "--preset", preset, "--out", str(out),
             "--seed", str(args.seed), "--frames", str(args.frames), "--size", str(args.size),
             "--samples", str(args.samples)],
            cwd=REPO,
        )
    finally:
        stop_backend(backend)
    if blender.returncode != 0:
        log.error("the Blender side failed (exit %d); backend log: %s", blender.returncode, out / "backend.log")
        return 1
    summary = json.loads((out / "summary.json").read_text())
    glbs = sorted(str(p.relative_to(out)) for p in store.rglob("*.glb"))
    summary["store_glb"] = glbs
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "",
        f"DreamPolish demo finished in {time.monotonic() - t0:.0f} s with preset {preset!r} ({why}).",
        f"  prompt:          {args.prompt} (seed {args.seed})",
        f"  stages imported: {', '.join(summary['stages_seen'])}",
        f"  Blender file:    {summary['blend']}  (textures packed: {', '.join(summary['images']) or 'none'})",
        f"  contact sheet:   {summary['contact_sheet']}",
        f"  glTF in store:   {', '.join(glbs) or 'none'}",
        f"  backend log:     {out / 'backend.log'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
