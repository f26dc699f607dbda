"""``rnnlab serve``: a web page to draw a digit and watch the model read it, plus a JSON API."""

from __future__ import annotations

import argparse
import errno
import socket

from rnnlab.cli.common import DEVICE_HELP, DefaultsHelpFormatter, check_at_least
from rnnlab.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a drawing page and a JSON prediction API for a run",
        description="Start a web server: open http://HOST:PORT/ to draw a digit and watch the prediction "
                    "evolve row by row; POST /predict for the JSON API; API docs at /docs.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted request body, in MB")
    parser.add_argument("--max-pixels", type=int, default=25_000_000,
                        help="largest accepted image, in pixels (at most Pillow's decompression-bomb limit, 89478485)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="predictions computed at once; more requests get 503")
    parser.add_argument("--rate-limit", type=int, default=120,
                        help="predictions per minute per client address (0: no limit)")
    parser.add_argument("--device", default="cpu", help=f"where the model runs: {DEVICE_HELP}")
    parser.set_defaults(func=run)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, or a ConfigError saying why it cannot be.

    Binding here, before saying "serving", turns a bad address or a busy port into one clear
    line; uvicorn would log an ERROR after our message and exit 3. uvicorn then serves on this
    very socket, so no other program can take the port in between.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a just-closed port is free
        sock.bind(address)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        if sock is not None:
            sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        code = getattr(exc, "errno", None)
        if code == errno.EADDRINUSE:
            hint = f"another program is using port {port}; stop it or pick another --port (0: any free port)"
        elif code == errno.EACCES:
            hint = "ports below 1024 need special rights; pick a --port above 1023"
        else:
            hint = "give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0 (every interface)"
        raise ConfigError(f"cannot listen on {where}: {reason}; {hint}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("rnnlab serve needs FastAPI and uvicorn: pip install 'rnnlab[serve]' (from a checkout: "
                          "pip install -e '.[serve]')") from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port} must be between 0 and 65535")
    for flag, value, low in (("--max-upload-mb", args.max_upload_mb, 0.001), ("--max-pixels", args.max_pixels, 1),
                             ("--concurrency", args.concurrency, 1), ("--rate-limit", args.rate_limit, 0)):
        check_at_least(flag, value, low)
    from PIL import Image

    # PIL refuses larger images as decompression bombs whatever our limit says: an upload under
    # --max-pixels would be turned away as "too large".
    if Image.MAX_IMAGE_PIXELS is not None and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        raise ConfigError(f"--max-pixels={args.max_pixels} is above {Image.MAX_IMAGE_PIXELS}, the largest image "
                          "the image decoder (Pillow) accepts; give at most that")
    from rnnlab.serve.app import Limits, create_app

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    concurrency=args.concurrency, rate_per_minute=args.rate_limit)
    import rnnlab
    from rnnlab.distributed import select_device

    app = create_app(rnnlab.load(args.run_dir, device=select_device(args.device)), limits=limits)
    sock = listen_socket(args.host, args.port)
    try:
        port = sock.getsockname()[1]  # the real one, also for --port 0
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"rnnlab: serving {args.run_dir} on http://{host}:{port}/  (API docs: /docs; Ctrl-C stops)",
              flush=True)  # flushed: a log file or a script waiting for the URL sees it now
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning"))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop
            pass
    finally:
        sock.close()
    return 0
