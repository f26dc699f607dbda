"""``rnnlab serve``: a web page to draw a digit and watch the model read it, plus a JSON API."""

from __future__ import annotations

import argparse

from rnnlab.cli.common import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a drawing page and a JSON prediction API for a run",
        description="Start a web server: open http://HOST:PORT/ to draw a digit and watch the prediction "
                    "evolve row by row; POST /predict for the JSON API; API docs at /docs.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted request body, in MB")
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="largest accepted image, in pixels")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="predictions computed at once; more requests get 503")
    parser.add_argument("--rate-limit", type=int, default=120,
                        help="predictions per minute per client address (0: no limit)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.errors import ConfigError

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("rnnlab serve needs FastAPI and uvicorn: pip install rnnlab[serve]") from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port} must be between 0 and 65535")
    for flag, value, low in (("--max-upload-mb", args.max_upload_mb, 0.001), ("--max-pixels", args.max_pixels, 1),
                             ("--concurrency", args.concurrency, 1), ("--rate-limit", args.rate_limit, 0)):
        if value < low:
            raise ConfigError(f"{flag}={value} must be >= {low}")
    from rnnlab.serve.app import Limits, create_app

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    concurrency=args.concurrency, rate_per_minute=args.rate_limit)
    app = create_app(args.run_dir, limits=limits)
    print(f"rnnlab: serving {args.run_dir} on http://{args.host}:{args.port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
