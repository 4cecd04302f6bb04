"""`dreampolish-backend models list|pull|check`: the diffusion priors a model set uses, and fetching them.

    models list  [--set NAME]          what each role of the set points at
    models check [--set NAME] [--tiny] which of them are present on this machine, and whether each folder is
                                       the architecture its role expects (exit 1 if any is missing or wrong)
    models pull  [--set NAME] [--dry-run] [--precision half|full]
                                       list the files loading uses and their total size, then fetch only
                                       those into the local hub cache (needs internet); half (the default)
                                       takes the fp16 weights where a repository has them
    models pull  --tiny [--force]      build the tiny random models into <model cache>/tiny (no internet)

The model cache folder is $DREAMPOLISH_MODEL_DIR (default ~/.cache/dreampolish/models);
hub checkpoints go to the Hugging Face cache (HF_HOME).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list, check or fetch the diffusion models")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("list", "show the models of a set"),
        ("check", "report which models of a set are present locally"),
        ("pull", "fetch a set's models (or build the tiny ones with --tiny)"),
    ):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--set", dest="model_set", default="default", help="model set name (default: default)")
        q.add_argument("--tiny", action="store_true", help="the tiny random models (same as --set tiny)")
        if name == "pull":
            q.add_argument("--force", action="store_true", help="with --tiny: rebuild even if already built")
            q.add_argument("--dry-run", action="store_true", help="only list the files and their total size")
            q.add_argument("--precision", choices=("half", "full"), default="half",
                           help="half (default): the fp16 weights where the repository has them, as the GPU runs "
                                "the priors in bf16/fp16 (half the download); full: the full-precision files")
        q.set_defaults(run=run)


def run(args: argparse.Namespace, api=None, download=None) -> int:
    """`api` (huggingface_hub.HfApi-like) and `download` (snapshot_download-like) are for tests."""
    from ..models.specs import model_dir, model_set

    set_name = "tiny" if args.tiny else args.model_set
    try:
        models = model_set(set_name)
    except (KeyError, ValueError, OSError) as exc:
        log.error("%s", exc.args[0] if exc.args else exc)
        return 2
    if args.models_command == "list":
        print(f"model set {set_name!r} (model cache: {model_dir()})")
        for spec in models.specs():
            where = f"{spec.hub_id}@{spec.revision}" if spec.hub_id else str(spec.local_path)
            print(f"  {spec.role:<14} {where}  {spec.description}")
        return 0
    if args.models_command == "check":
        return _check(models, set_name)
    return _pull(models, set_name, args, api, download)


def _check(models, set_name: str) -> int:
    from ..models.checks import architecture_problems, describe_problems
    from ..models.loading import local_checkpoint_dir

    missing = wrong = 0
    for spec in models.specs():
        folder = local_checkpoint_dir(spec)
        status = f"present  {folder}" if folder else "MISSING"
        missing += folder is None
        print(f"  {spec.role:<14} {spec.name:<45} {status}")
        problems = architecture_problems(spec, folder) if folder else []
        if problems:
            wrong += 1
            print(describe_problems(spec, problems))
    if missing:
        how = "`dreampolish-backend models pull --tiny`" if set_name == "tiny" else (
            "`dreampolish-backend models pull` on a machine with internet"
        )
        print(f"{missing} model(s) missing; run {how}")
    if wrong:
        print(f"{wrong} model folder(s) are not the architecture their role expects; fix the models config")
    return 1 if missing or wrong else 0


def _pull(models, set_name: str, args: argparse.Namespace, api, download) -> int:
    from ..models.hub_files import PullPlanError, format_bytes, plan_pull
    from ..models.loading import ModelNotFoundError, hub_offline, pull
    from ..models.tiny import build_tiny_models

    if set_name == "tiny":
        if getattr(args, "dry_run", False):  # --dry-run writes nothing: say what a build would do
            from ..models.specs import tiny_model_dir
            from ..models.tiny import TINY_MODELS, tiny_models_present

            root = tiny_model_dir()
            state = "already built" if tiny_models_present(root) and not args.force else "would be built"
            print(f"tiny models ({', '.join(TINY_MODELS)}) {state} in {root}; nothing downloaded, nothing written")
            return 0
        root = build_tiny_models(force=args.force)
        print(f"tiny models ready in {root}")
        return 0
    if hub_offline():
        log.error("HF_HUB_OFFLINE is set: cannot fetch models; unset it on a machine with internet")
        return 1
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    plans, failed = {}, 0
    for spec in models.specs():
        if spec.hub_id is None:
            continue
        try:
            plans[spec.role] = plan_pull(spec, api, args.precision)
        except (PullPlanError, OSError, ValueError) as exc:
            failed += 1
            log.error("cannot plan the download of %s: %s", spec.name, exc)
    for plan in plans.values():
        print(plan.describe())
    total = sum(p.total_bytes for p in plans.values())
    print(f"total: {sum(len(p.files) for p in plans.values())} files, {format_bytes(total)}")
    if failed or args.dry_run:
        return 1 if failed else 0
    for spec in models.specs():
        try:
            folder = pull(spec, plans.get(spec.role), download)
            print(f"  {spec.role:<14} {spec.name:<45} {folder}")
        except (ModelNotFoundError, OSError, ValueError) as exc:
            failed += 1
            log.error("could not fetch %s: %s", spec.name, exc)
    return 1 if failed else 0
