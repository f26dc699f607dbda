"""The ``rnnlab`` command line: thin wrappers that parse, call the library, and print.

Each subcommand lives in its own module with ``register(subparsers)``; a user mistake
(``RnnlabError``) ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import shlex
import signal
import sys
import warnings
from pathlib import Path

from rnnlab.cli.common import IntermixedParser
from rnnlab.errors import COMMAND_LINE, RnnlabError
from rnnlab.stopping import Terminated, sigterm_raises

# Modules under rnnlab.cli, each with register(subparsers), in the order `--help` lists them.
COMMANDS = ("train", "evaluate", "compare", "info", "gradients", "predict", "export", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlab",
        description="Train, compare, inspect, export and serve recurrent sequence classifiers.",
    )
    from rnnlab import __version__

    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    # Every subcommand takes its positionals (e.g. KEY=VALUE overrides) before and after options.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    for name in COMMANDS:
        importlib.import_module(f"rnnlab.cli.{name}").register(subparsers)
    # Models of one's own (rnnlab.register_model): before the command (`rnnlab --import F train`) or in it.
    parser.add_argument("--import", dest="imports_first", action="append", metavar="FILE_OR_MODULE", default=[],
                        help=IMPORT_HELP)
    for command in set(subparsers.choices.values()):
        command.add_argument("--import", dest="imports", action="append", metavar="FILE_OR_MODULE",
                             default=argparse.SUPPRESS, help=IMPORT_HELP)
    return parser


IMPORT_HELP = ("a Python file (my_cells.py) or module that registers models of your own with "
               "rnnlab.register_model, for model.cell=NAME; give it to every command that reads such a run "
               "(repeatable)")


def _imports(args: argparse.Namespace) -> list[str]:
    return [*getattr(args, "imports_first", []), *getattr(args, "imports", [])]


def _import_models(args: argparse.Namespace) -> None:
    sources = _imports(args)
    if sources:
        from rnnlab.models.own import import_models

        for source in sources:
            import_models(source)


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # .../rnnlab
_default_formatwarning = warnings.formatwarning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """rnnlab's own warnings are for users: one line, no source excerpt. Others keep their
    location, which is what a developer needs."""
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        return f"rnnlab: warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    # The library's errors name the flags typed here (--out), not a Python caller's keywords (out=):
    # for this command only, so that a test's main([...]) leaves a library call after it as it was.
    token = COMMAND_LINE.set(True)
    try:
        return _run_command(argv)
    finally:
        COMMAND_LINE.reset(token)


def _run_command(argv: list[str] | None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    # Parsed before SIGTERM is taken over: nothing has started that a SIGTERM would need to stop
    # (it ends the process at once, as it does while Python starts), and argparse cannot be stopped
    # midway: an exception inside parse_intermixed_args leaves it half restored, and it then raises
    # an AttributeError of its own, with a traceback.
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    empty = _empty_path(args)
    if empty is not None:
        print(f"rnnlab: error: {empty}", file=sys.stderr)
        return 2
    try:
        # SIGTERM (kill, a scheduler's time limit) stops a run between two steps, resumable, and the
        # command then ends as Ctrl-C ends it, with a message and no traceback.
        with sigterm_raises():
            _import_models(args)
            return int(args.func(args) or 0)
    except RnnlabError as exc:
        print(f"rnnlab: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if exc.filename is None and _stdout_gone():  # the reader went away (`rnnlab eval RUN | head -1`)
            return 141  # quietly, with 128 + SIGPIPE, what a shell reports for a tool that pipe closed
        print(f"rnnlab: error: {exc.strerror or exc}", file=sys.stderr)  # a pipe or socket of the command's own
        return 2
    except OSError as exc:  # a path that cannot be read or written, a full disk: the user's to fix
        where = f": {exc.filename}" if exc.filename else ""
        print(f"rnnlab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Terminated as stop:
        _say_stopped("terminated (SIGTERM)", _how_to_continue(args, argv, stop.run_dir))
        return _ended_apart(128 + signal.SIGTERM)  # 143, as the shell reports a process the signal ended
    except KeyboardInterrupt as stop:
        _say_stopped("interrupted", _how_to_continue(args, argv, _run_folder_stopped(stop)))
        return _ended_apart(130)


def _ended_apart(code: int) -> int:
    """``code``; a process of a torchrun run ends here, at once (see distributed.end_process)."""
    if "torch.distributed" in sys.modules:  # else torch was never loaded: no process group
        from rnnlab.distributed import end_process

        end_process(code, together=False)
    return code


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone; if so, it is pointed at /dev/null,
    so that Python's flush at exit does not complain a second time."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()  # a pipe's write end polls POLLERR once its last reader has closed
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout (pythonw), closed, or no poll (Windows)
        return False
    if gone:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    return gone


# The path arguments of every command, and what to give instead of an empty one (an unset shell
# variable: "" would be the current folder, or the default for --out, and neither was asked for).
_PATH_ARGUMENTS = {
    "run_dir": ("RUN_DIR", "a run folder (one `rnnlab train` wrote)"),
    "run": ("--run", "a run folder (one `rnnlab train` wrote)"),
    "resume": ("--resume", "the run folder to resume"),
    "out": ("--out", "a path, or drop --out for the default one"),
    "data_dir": ("--data-dir", "the folder of the IDX files (or a sequence-file run's .npz), or drop --data-dir"),
    "short_data_dir": ("--data-dir", "the folder of the IDX files (or a sequence file), or drop --data-dir"),
}


def _empty_path(args: argparse.Namespace) -> str | None:
    """The message for a path argument given empty, or None."""
    for dest, (shown, wanted) in _PATH_ARGUMENTS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            return f"{shown} is empty; give {wanted}"
    return None


def _under_torchrun() -> bool:
    # (RANK alone is not torchrun's: a cluster's environment may hold it for a single process.)
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _say_stopped(what: str, hint: str) -> None:
    """One line, from one process: under torchrun every process is told, and rank 0 speaks for them."""
    if _under_torchrun() and os.environ.get("RANK", "0").strip() != "0":
        return
    print(f"rnnlab: {what}{hint}", file=sys.stderr)


def _how_to_continue(args: argparse.Namespace, argv: list[str] | None, run_dir: Path | None) -> str:
    """The end of the line that says a signal stopped the command: what to run to go on, if anything."""
    if run_dir:
        launcher = "torchrun ... " if _under_torchrun() else ""
        imports = "".join(f"--import {shlex.quote(source)} " for source in _imports(args))  # its model, again
        return f"; continue with: {launcher}rnnlab {imports}train --resume {run_dir}"
    if getattr(args, "command", None) == "compare" and not args.dry_run:
        # A rerun keeps the finished seeds, resumes the stopped ones, and writes the results from all
        # of them: also after a signal that came once every seed was done, while the results were written.
        command = shlex.join(["rnnlab", *(sys.argv[1:] if argv is None else argv)])
        return f"; rerun the same command to resume: {command}"
    return ""


def _run_folder_stopped(stop: KeyboardInterrupt) -> Path | None:
    """The folder of the training run a Ctrl-C stopped at once (a second Ctrl-C, during the test
    evaluation, say), if ``--resume`` would take it: ``rnnlab.run`` names it on the way out. A dry
    run's folder is removed after that: then there is nothing to resume."""
    run_dir = getattr(stop, "run_dir", None)
    return run_dir if run_dir is not None and run_dir.is_dir() else None
