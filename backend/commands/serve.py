"""`dreampolish-backend serve`: run the backend (ROUTER socket, job queue, one worker per device)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dreampolish.protocol.limits import LIMITS

if TYPE_CHECKING:
    from ..executor import Executor
    from ..server import PipelineFactory

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://127.0.0.1:5557"
DEFAULT_PIPELINE = "dreampolish.backend.pipeline:DreamPolishPipeline"
DEFAULT_STORE = Path.home() / ".local" / "share" / "dreampolish" / "jobs"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the backend server")
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    p.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help=f"job store folder (default {DEFAULT_STORE})"
    )
    p.add_argument(
        "--device",
        action="append",
        default=None,
        help="torch device to run jobs on; repeat for one worker per device (default: cuda:0 if present, else cpu)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where jobs run: local (one worker per --device, the default) or ray (one worker per GPU of "
        "a Ray cluster; needs the ray extra)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with --executor ray: the cluster's address, e.g. 10.0.0.1:6379 or auto (default: RAY_ADDRESS, "
        "a cluster started on this machine by `ray start`, else a new one on this machine)",
    )
    p.add_argument(
        "--preset", default=None, help="default preset announced to clients (default: the pipeline's first)"
    )
    p.add_argument(
        "--pipeline",
        default=DEFAULT_PIPELINE,
        help="MODULE:CALLABLE returning a Pipeline; called once per worker with no arguments "
        f"(default {DEFAULT_PIPELINE})",
    )
    p.add_argument(
        "--curve-secret-key",
        type=Path,
        default=None,
        help="the server's CURVE secret key file (from `dreampolish-backend keys`); required off loopback",
    )
    p.add_argument(
        "--curve-clients",
        type=Path,
        default=None,
        help="folder of the client public keys (NAME.key) this backend serves; re-read when it changes. "
        "Required off loopback unless --allow-any-client",
    )
    p.add_argument(
        "--curve-admins",
        type=Path,
        default=None,
        help="folder of admin public keys: served, and they may see and cancel every client's jobs",
    )
    p.add_argument(
        "--allow-any-client",
        action="store_true",
        help="serve every client that holds the server key, off loopback too (no allow-list)",
    )
    _add_limit_options(p)
    p.add_argument(
        "--expire-after",
        type=float,
        default=None,
        metavar="DAYS",
        help="delete finished jobs submitted more than DAYS days ago (default: keep them)",
    )
    p.set_defaults(run=run)


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """How much the backend takes from its clients: queued jobs and connections."""
    p.add_argument(
        "--max-queued-per-client",
        type=int,
        default=100,
        help="queued jobs one client key may have (default 100); more get queue_full",
    )
    p.add_argument(
        "--max-queued", type=int, default=1000, help="queued jobs of all clients together (default 1000)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=LIMITS.max_connections_total,
        help=f"connections served at once, of all clients (default {LIMITS.max_connections_total}); "
        "one more is refused in its handshake",
    )
    p.add_argument(
        "--max-connections-per-address",
        type=int,
        default=LIMITS.max_connections_per_address,
        help=f"connections served at once from one peer address (default {LIMITS.max_connections_per_address})",
    )


def _executor(args: argparse.Namespace) -> tuple[Executor | None, PipelineFactory]:
    """The executor (None: the server's LocalExecutor on --device) and the server's pipeline factory."""
    from ..server import load_pipeline_factory

    if args.executor == "local":
        if args.ray_address:
            raise ValueError("--ray-address needs --executor ray")
        return None, load_pipeline_factory(args.pipeline)
    if args.device:
        raise ValueError("--device is for --executor local; with ray, every GPU of the cluster runs jobs")
    try:
        from ..executor_ray import RayExecutor
    except ImportError as exc:
        raise ImportError(f"--executor ray needs Ray: pip install 'dreampolish[ray]' ({exc})") from exc
    load_pipeline_factory(args.pipeline)  # a bad --pipeline is refused before any actor starts
    executor = RayExecutor(args.pipeline, args.ray_address)
    return executor, executor.pipeline_factory


def run(args: argparse.Namespace) -> int:
    from ..security import InsecureBindRefused, check_bind_allowed, load_server_keys

    try:
        keys = load_server_keys(args.curve_secret_key) if args.curve_secret_key else None
        # Before anything slow (torch, the pipeline's models): a refused bind is answered at once.
        check_bind_allowed(args.bind, keys, args.curve_clients or args.curve_admins, args.allow_any_client)
    except InsecureBindRefused as exc:
        log.error("%s", exc)
        return 2
    except (ValueError, OSError) as exc:
        log.error("cannot start the backend: %s", exc)
        return 2

    from ..connections import ConnectionLimits
    from ..server import BackendServer, CannotBind, ServerConfig, resolve_devices

    try:
        config = ServerConfig(
            bind=args.bind,
            store_dir=args.store,
            devices=resolve_devices(args.device),
            default_preset=args.preset,
            curve_keys=keys,
            curve_clients=args.curve_clients,
            curve_admins=args.curve_admins,
            allow_any_client=args.allow_any_client,
            max_queued_per_client=args.max_queued_per_client,
            max_queued_total=args.max_queued,
            connection_limits=ConnectionLimits(per_address=args.max_connections_per_address,
                                               total=args.max_connections),
            expire_after_s=args.expire_after * 86400 if args.expire_after is not None else None,
        )
        executor, factory = _executor(args)
    except (ValueError, ImportError, OSError, ConnectionError) as exc:
        log.error("cannot start the backend: %s", exc)
        return 2
    try:
        server = BackendServer(config, factory, executor=executor)
    except (ValueError, ImportError, OSError) as exc:
        log.error("cannot start the backend: %s", exc)
        if executor is not None:
            executor.shutdown()
        return 2
    # SIGTERM/SIGINT stop the loop; running jobs are interrupted and resume after a restart.
    server.install_signal_handlers()
    try:
        server.serve_forever()
    except CannotBind as exc:  # address in use, bad endpoint, no permission
        log.error("%s", exc)
        return 2
    return 0
