"""A small web app to draw a digit and watch a trained recurrent model read it, row by row.

``create_app(run_dir)`` builds the FastAPI app (needs ``pip install rnnlab[serve]``); the
``rnnlab serve`` command runs it with uvicorn. Importing this package does not import FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`rnnlab.serve.app.create_app`."""
    from rnnlab.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
