"""``csi serve [--host 127.0.0.1] [--port 8000] [--token T]``: identification as an HTTP service
(``csi_assets.service``) for the dataset's promoted model and its reference index.

FastAPI, uvicorn, torch and faiss are imported when the command runs, not when ``csi`` builds its parser."""

from __future__ import annotations

import argparse
import os

from csi_assets.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve identification over HTTP (POST /identify, docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token", default=os.environ.get("CSI_SERVE_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' (default $CSI_SERVE_TOKEN; unset: no token)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body (default 50 MB)")
    p.add_argument("--max-seconds", type=float, default=900.0, help="longest recording accepted (default 900 s)")
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default $CSI_DATASET_DIR or data/demo)")
    p.add_argument("--store", default=None, help="DuckDB store (default $CSI_STORE_PATH or data/csi.duckdb)")
    p.add_argument("--workers", type=int, default=0,
                   help="identifications running at once (default 0: one per CPU core); others wait their turn")
    p.add_argument("--device", default=None, help="torch device (default: the model's, else cuda > mps > cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn

    from csi_assets.cli.identify import locations
    from csi_assets.service import ServiceConfig, ServiceError, create_app

    if not 0 < args.port < 65536:
        raise CliError(f"--port must be between 1 and 65535, got {args.port}")
    if args.workers < 0:
        raise CliError(f"--workers must be ≥ 1 (or 0: one per CPU core), got {args.workers}")
    dataset_dir, store = locations(args)
    config = ServiceConfig(store_path=Path(store), dataset_dir=Path(dataset_dir), token=args.token or None,
                           max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_seconds=args.max_seconds,
                           device=args.device, workers=args.workers)
    try:
        app = create_app(config)
    except ServiceError as err:
        raise CliError(err.message) from err
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
