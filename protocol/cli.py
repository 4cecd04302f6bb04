"""`dreampolish`: the command line front end on BackendClient.

    dreampolish generate "a ceramic teapot" --backend tcp://127.0.0.1:5557 --out teapot.glb
    dreampolish generate "a stone gargoyle" --mesh rough.glb --mode geometry --out gargoyle.glb
    dreampolish generate "a mug" --mesh mug.glb --mode texture --mask handle.npy --feather 0.01 \
        --mask-prompt "worn brass handle" --out mug_brass.glb   (one float32 weight per vertex, .npy)
    dreampolish generate --image concept.png ["a bronze owl"] --out owl.glb   (the picture is the front view)
    dreampolish generate --view front.png front.json --view top.png top.json --out owl.glb   (pictures, exact cameras)
    dreampolish jobs
    dreampolish fetch JOB_ID --out results/
    dreampolish cancel JOB_ID
    dreampolish delete JOB_ID
    dreampolish keys --out DIR [--name NAME]   (this client's key pair; pass --client-key DIR/NAME.key_secret)
    dreampolish resume JOB_ID [--mesh edited.glb]

generate writes each stage's mesh as it arrives (FILE.<stage>.glb) and the
final one at FILE. The backend address can also come from DREAMPOLISH_BACKEND.
Not vendored into the Blender add-on (it is a tool for terminals and scripts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import messages as m
from .camera_json import load_camera_json
from .client import BackendClient, ClientError, VersionMismatch
from .errors import ProtocolError, ValidationError
from .gltf import glb_to_mesh, mesh_to_glb
from .image import PNG_SIGNATURE, ReferenceImage
from .job import JOB_MODES, JobSpec, PictureView, parse_option, validate_spec
from .refine_mask import RefineMask, check_mask
from .scene import MeshPayload
from .udim import face_tiles
from .variants import texture_set_specs, texture_sets_glb

DEFAULT_BACKEND = "tcp://127.0.0.1:5557"


def _option(text: str) -> tuple[str, bool | int | float | str]:
    try:
        return parse_option(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_part_options(gen: argparse.ArgumentParser) -> None:
    """generate's options for refining part of a mesh (--mask) and for texture sets (--texture-sets)."""
    gen.add_argument("--mask", type=Path, default=None, metavar="WEIGHTS.npy",
                     help="refine only part of --mesh: a float32 .npy of one weight in [0, 1] per vertex of the "
                          "GLB's first mesh, in its POSITION order (its primitives one after another)")
    gen.add_argument("--feather", type=float, default=0.0, metavar="WIDTH",
                     help="with --mask: the border where the change fades out, in the mesh's units (default 0)")
    gen.add_argument("--mask-prompt", default="", help="with --mask: what the masked region becomes")
    gen.add_argument("--mask-negative", default="", help="with --mask: the region's negative prompt")
    gen.add_argument("--udim", default="", metavar="TILES",
                     help="with --mesh and --mode texture: the UDIM tiles its UVs span (e.g. 1001,1002; 'auto': "
                          "those its faces lie in); one image per tile, OUT.base_color.<tile>.png")
    gen.add_argument("--texture-sets", type=int, default=0, metavar="N",
                     help="with --mesh and --mode texture: N texture sets (seeds SEED..SEED+N-1) on the mesh's own "
                          "UVs, written to OUT as one .glb with KHR_materials_variants")
    gen.add_argument("--set-prompt", action="append", default=None, metavar="TEXT",
                     help="with --texture-sets: one prompt per set, in order, instead of the prompt")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        default=os.environ.get("DREAMPOLISH_BACKEND", DEFAULT_BACKEND),
        help=f"backend address (default $DREAMPOLISH_BACKEND or {DEFAULT_BACKEND})",
    )
    common.add_argument(
        "--server-key", default=None, help="the backend's CURVE public key (Z85 text or .key file)"
    )
    common.add_argument(
        "--client-key",
        default=os.environ.get("DREAMPOLISH_CLIENT_KEY"),
        help="this client's CURVE key pair: the NAME.key_secret file from `dreampolish keys` "
        "(default $DREAMPOLISH_CLIENT_KEY)",
    )
    common.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a reply (default 10)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what the client does")

    parser = argparse.ArgumentParser(prog="dreampolish", description="Talk to a DreamPolish backend.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate", parents=[common], help="make a textured mesh from a prompt (or refine a mesh)"
    )
    gen.add_argument("prompt", nargs="?", default="", help="what to make (optional with --image)")
    gen.add_argument("--image", type=Path, default=None,
                     help="a PNG picture of the object as the reference (front) view; transparency is its mask")
    gen.add_argument("--view", nargs=2, action="append", default=[], type=Path, metavar=("PICTURE", "CAMERA"),
                     help="a picture (PNG) and the camera that took it (JSON with the CameraSpec fields, as "
                          "`dreampolish-backend render --camera` reads it); repeat for every picture, the first "
                          "is the front")
    gen.add_argument("--out", type=Path, required=True, help="final .glb; stage meshes go to OUT.<stage>.glb")
    gen.add_argument("--preset", default=None, help="backend preset (default: the backend's default)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--mesh", type=Path, default=None, help="a .glb to refine (Blender axes are restored)")
    gen.add_argument(
        "--mode", choices=JOB_MODES, default=None, help="default: generate, or geometry with --mesh"
    )
    # The backend names its stages (welcome.stage_chains) and refuses one its chain does not have.
    gen.add_argument("--stage", action="append", dest="stages", metavar="STAGE",
                     help="run only these stages (e.g. nerf; the backend's welcome lists its stages)")
    gen.add_argument("--pause-after", action="append", default=[], metavar="STAGE", help="stage gate")
    gen.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    _add_part_options(gen)
    gen.set_defaults(run=cmd_generate)

    keys = sub.add_parser("keys", help="create this client's CURVE key pair (NAME.key, NAME.key_secret)")
    keys.add_argument("--out", type=Path, required=True, help="folder to write the key files into")
    keys.add_argument("--name", default="client", help="file name stem (default: client)")
    keys.set_defaults(run=cmd_keys)

    jobs = sub.add_parser("jobs", parents=[common], help="list the backend's jobs")
    jobs.set_defaults(run=cmd_jobs)

    fetch = sub.add_parser("fetch", parents=[common], help="download every stage result of a job")
    fetch.add_argument("job_id")
    fetch.add_argument("--out", type=Path, required=True, help="folder for <index>_<stage>.glb files")
    fetch.set_defaults(run=cmd_fetch)

    delete = sub.add_parser("delete", parents=[common], help="delete a finished job and its results")
    delete.add_argument("job_id")
    delete.set_defaults(run=cmd_delete)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cmd_cancel)

    resume = sub.add_parser(
        "resume", parents=[common], help="resume a paused job, optionally from an edited mesh"
    )
    resume.add_argument("job_id")
    resume.add_argument("--mesh", type=Path, default=None)
    resume.set_defaults(run=cmd_resume)
    return parser


def _client(args: argparse.Namespace) -> BackendClient:
    client = BackendClient(
        args.backend, server_public_key=args.server_key, timeout_s=args.timeout, client_key=args.client_key
    )
    client.connect()
    return client


def _is_export_marker(result: m.StageResult) -> bool:
    """The export stage's empty mesh says the export is done; the final mesh is the texture stage's,
    already received (protocol/README.md, stage_result)."""
    return result.stage == "export" and result.mesh.num_vertices == 0


def _stage_path(out: Path, stage: str) -> Path:
    return out.with_name(f"{out.stem}.{stage}{out.suffix or '.glb'}")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_image(path: Path | None, flag: str = "--image") -> ReferenceImage | None:
    """--image FILE as a checked ReferenceImage (before anything is sent); ProtocolError says what is wrong."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{flag} {path} cannot be read: {exc.strerror}") from None
    if not data.startswith(PNG_SIGNATURE):
        raise ValidationError(f"{flag} {path} is not a PNG file; convert it to PNG first (any colour type, "
                              "with transparency where the object is not)")
    return ReferenceImage(png=data).validate()


def _read_mask(args: argparse.Namespace, mode: str, mesh: MeshPayload | None) -> RefineMask | None:
    """--mask FILE as a RefineMask checked against --mesh (before anything is sent)."""
    if args.mask is None:
        return None
    try:
        weights = np.load(args.mask, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValidationError(f"--mask {args.mask} is not a .npy array ({exc}); save the weights with "
                              "numpy.save as float32, one per vertex") from exc
    mask = RefineMask(weights, feather=args.feather, prompt=args.mask_prompt, negative_prompt=args.mask_negative)
    check_mask(mode, mask, mesh)
    return mask


def _udim_tiles(text: str, mesh: MeshPayload | None) -> list[int]:
    """--udim: "1001,1002" -> [1001, 1002]; "auto": the tiles the mesh's faces lie in."""
    if not text:
        return []
    if text == "auto":
        if mesh is None or mesh.uvs is None:
            raise ValidationError("--udim auto needs --mesh with UVs")
        return sorted(set(face_tiles(mesh.uvs).tolist()))
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValidationError(f"--udim {text!r} must be tile numbers separated by commas, or auto") from exc


def _read_views(pairs: list[list[Path]]) -> list[PictureView]:
    """--view PICTURE CAMERA ..., each checked, the error naming the picture by its place on the line."""
    views = []
    for i, (picture, camera) in enumerate(pairs):
        try:
            views.append(PictureView(_read_image(picture, "--view"), load_camera_json(camera)))
        except ValidationError as exc:
            raise type(exc)(f"view {i} ({picture}): {exc}") from None
    return views


def cmd_generate(args: argparse.Namespace) -> int:
    mesh = glb_to_mesh(args.mesh.read_bytes()) if args.mesh else None
    mode = args.mode or ("geometry" if mesh is not None else "generate")
    image = _read_image(args.image)
    mask = _read_mask(args, mode, mesh)
    udim_tiles = _udim_tiles(args.udim, mesh)
    views = _read_views(args.view)
    with _client(args) as client:
        spec = JobSpec(
            prompt=args.prompt,
            negative_prompt=args.negative,
            seed=args.seed,
            preset=args.preset or client.welcome.default_preset,
            mode=mode,
            stages=args.stages,
            pause_after=args.pause_after,
            options=dict(args.option),
            input_mesh=mesh,
            image=image,
            mask=mask,
            udim_tiles=udim_tiles,
            views=views,
        )
        validate_spec(spec)  # the backend's own first check, here before anything is sent
        if args.texture_sets:
            return _texture_sets(client, spec, args)
        job_id = client.submit(spec)
        print(f"job {job_id} queued on {args.backend} (preset {spec.preset})", flush=True)
        try:
            return _follow(client, job_id, args.out)
        except KeyboardInterrupt:
            client.cancel(job_id)
            print(f"\ncancel requested for job {job_id}", file=sys.stderr)
            return 130


def _texture_sets(client: BackendClient, spec: JobSpec, args: argparse.Namespace) -> int:
    """--texture-sets N: N texture-only jobs of the mesh, each followed to its end (OUT.set<i>.glb), then OUT
    as one .glb holding the N sets as KHR_materials_variants (protocol/variants.py)."""
    specs = texture_set_specs(spec, args.texture_sets, args.set_prompt)
    jobs = [client.submit(s) for s in specs]
    print(f"{len(jobs)} texture sets queued on {args.backend}: {', '.join(jobs)}", flush=True)
    paths = [args.out.with_name(f"{args.out.stem}.set{i}{args.out.suffix}") for i in range(len(jobs))]
    for job_id, path in zip(jobs, paths):
        code = _follow(client, job_id, path)
        if code:
            return code
    names = [f"seed {s.seed}" if args.set_prompt is None else s.prompt for s in specs]
    _write(args.out, texture_sets_glb([glb_to_mesh(p.read_bytes()) for p in paths], names))
    print(f"{len(jobs)} texture sets -> {args.out} (KHR_materials_variants: {', '.join(names)})")
    return 0


def _follow(client: BackendClient, job_id: str, out: Path) -> int:
    last: m.StageResult | None = None
    shown = ("", -1)
    for event in client.events(job_id):
        if isinstance(event, m.Progress):
            # One line per stage start and every tenth of it.
            tenth = event.step * 10 // max(event.total, 1)
            if (event.stage, tenth) != shown:
                shown = (event.stage, tenth)
                losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.losses.items()))
                print(f"  {event.stage:8s} {event.step:>6d}/{event.total:<6d} {losses}", flush=True)
        elif isinstance(event, m.StageResult):
            if _is_export_marker(event):
                print("export: done (the final mesh is the texture stage's)")
                continue
            path = _stage_path(out, event.stage)
            _write(path, mesh_to_glb(event.mesh, name=f"{event.stage}"))
            print(
                f"{event.stage}: {event.mesh.num_vertices} vertices, {event.mesh.num_faces} faces -> {path}"
            )
            last = event
        elif isinstance(event, m.Paused):
            print(f"job {job_id} paused after {event.stage}; continue with: dreampolish resume {job_id}")
            return 0
        elif isinstance(event, m.Resumed):
            print(f"job {job_id} resumed")
        elif isinstance(event, m.Failed):
            print(f"job {job_id} failed: {event.message} ({event.code})", file=sys.stderr)
            return 1
        elif isinstance(event, m.Cancelled):
            print(f"job {job_id} was cancelled", file=sys.stderr)
            return 1
        elif isinstance(event, m.Done):
            if last is None:
                print(f"job {job_id} finished without a mesh", file=sys.stderr)
                return 1
            _write(out, mesh_to_glb(last.mesh, name="DreamPolish"))
            for tile in (t for t in last.mesh.textures if t.tile and t.png is not None):
                # the UDIM tiles the .glb cannot hold, named as Blender finds a tiled image's files
                _write(out.with_name(f"{out.stem}.{tile.role}.{tile.tile}.png"), tile.png)
            print(f"done: {out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import zmq.auth

    name = args.name
    if not name or name in (".", "..") or not all(c.isalnum() or c in "-_." for c in name):
        print(f"error: key name {name!r} must be a plain file name", file=sys.stderr)
        return 2
    public_file, secret_file = args.out / f"{name}.key", args.out / f"{name}.key_secret"
    if public_file.exists() or secret_file.exists():
        print(f"error: {public_file} or {secret_file} exists; not overwritten", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(args.out), name)
    os.chmod(secret_file, 0o600)  # the secret must not be readable by other users of the machine
    public, _ = zmq.auth.load_certificate(str(public_file))
    print(f"secret key file (pass it as --client-key): {secret_file}")
    print(f"public key file (give it to the backend's administrator): {public_file}")
    print(f"client public key: {public.decode('ascii')}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs()
    if not jobs:
        print("no jobs")
    for j in jobs:
        stages = ",".join(j.stages_done) or "-"
        print(f"{j.job_id}  {j.state:9s}  {j.mode:8s}  {stages:40s}  {j.prompt[:60]!r}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.fetch_result(args.job_id)
    for s in result.stage_results:
        if _is_export_marker(s):
            continue
        path = args.out / f"{s.index}_{s.stage}.glb"
        _write(path, mesh_to_glb(s.mesh, name=s.stage))
        print(path)
    print(f"job {args.job_id} is {result.state}; {len(result.stage_results)} stage results")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.job_id)
    print(f"job {args.job_id} deleted")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.cancel(args.job_id)
    print(f"cancel requested for job {args.job_id}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    mesh = glb_to_mesh(args.mesh.read_bytes()) if args.mesh else None
    with _client(args) as client:
        client.resume(args.job_id, mesh)
        print(f"job {args.job_id} resumed")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.run(args))
    except VersionMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, ProtocolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
