"""The top-level package: its public names load on first use, so the command line starts fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnlab


def test_public_names_resolve_to_their_modules() -> None:
    from rnnlab import config, presets, run, trained

    assert rnnlab.train is run.train and rnnlab.load is trained.load and rnnlab.RunConfig is config.RunConfig
    assert rnnlab.get_preset is presets.get_preset
    assert sorted(rnnlab.__all__) == sorted(rnnlab._EXPORTS) and set(rnnlab.__all__) <= set(dir(rnnlab))
    for name, module in rnnlab._EXPORTS.items():
        value = getattr(rnnlab, name)
        # Defined where the table says (or in a module of that package, as create_model in rnnlab.models),
        # under the name it is exported as.
        assert value.__module__ == module or value.__module__.startswith(module + "."), (name, value.__module__)
        assert value.__name__ == name


@pytest.mark.slow  # a Python process of its own
def test_subpackages_load_on_first_use_as_attributes() -> None:
    code = "import rnnlab\nprint(rnnlab.data.load_split.__module__, rnnlab.checkpoint.SUMMARY)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["rnnlab.data.sources", "summary.json"], result.stderr


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'rnnlab' has no attribute 'trian'"):
        rnnlab.trian  # noqa: B018
    assert not hasattr(rnnlab, "trian")


@pytest.mark.slow  # a Python process of its own
def test_command_line_help_does_not_import_torch() -> None:
    """`rnnlab --help`, `rnnlab presets` and `rnnlab models` answer without loading torch (~1.5 s),
    and a Ctrl-C while a command loads torch reaches the command line's handler (one line, exit 130)."""
    code = ("import sys\nfrom rnnlab.cli import build_parser, main\nbuild_parser()\n"
            "assert main(['presets']) == 0 and main(['models']) == 0\nimport rnnlab\nrnnlab.get_preset('dlw-rnn-a')\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_warnings_point_at_the_callers_line_past_rnnlab_and_torch() -> None:
    """A warning raised inside a module's forward, called by the user through torch's Module.__call__:
    its location is the user's line, not rnnlab's nor torch's."""
    import warnings

    code = ("import torch\nfrom rnnlab.errors import warn_caller\n"
            "class Layer(torch.nn.Module):\n    def forward(self, x):\n        warn_caller('deep inside')\n"
            "        return x\n")
    namespace: dict = {}
    exec(compile(code, str(Path(rnnlab.__file__).parent / "_as_if_rnnlab.py"), "exec"), namespace)
    layer = namespace["Layer"]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(torch.zeros(1))
    assert [(w.message.args[0], w.filename) for w in caught] == [("deep inside", __file__)]


def test_in_a_compares_worker_warnings_point_at_the_pools_line() -> None:
    """A compare's worker runs each seed from rnnlab/pool.py, called by concurrent.futures: a warning
    pointed at concurrent.futures' line (shown in Python's two-line form with its source), not one of
    rnnlab's, which the command line shows in one line."""
    import warnings

    import rnnlab.pool

    package = Path(rnnlab.__file__).parent
    inner: dict = {}
    exec(compile("from rnnlab.errors import warn_caller\ndef train():\n    warn_caller('short budget')\n",
                 str(package / "_as_if_rnnlab.py"), "exec"), inner)
    pool: dict = {"train": inner["train"]}
    exec(compile("def _started():\n    train()\n", rnnlab.pool.__file__, "exec"), pool)
    exec(compile("def _round():\n    train()\n", rnnlab.pool.__file__, "exec"), pool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool["_started"]()
        pool["_round"]()  # the pool's code in the compare's own process: the caller's line, as before
    assert [(w.message.args[0], w.filename) for w in caught] == [("short budget", rnnlab.pool.__file__),
                                                                 ("short budget", __file__)]


@pytest.mark.slow  # a compare and its worker process
def test_a_compares_warnings_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[data]\nval_size = 100\n[model]\nhidden = 8\n[train]\niterations = 5\nwarmup = 10\n")
    result = subprocess.run([sys.executable, "-m", "rnnlab", "compare", str(config), "--seeds", "1", "--jobs", "1",
                             "--no-plot", "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "train.warmup=10" in line]
    assert len(warned) == 1 and warned[0].startswith("rnnlab: warning: train.warmup=10 iterations is the whole")
    assert "concurrent" not in result.stderr and "call_item" not in result.stderr


@pytest.mark.slow  # a Python process of its own
def test_a_commands_warnings_are_one_line() -> None:
    """Under the command line a warning is one line that says it is rnnlab's, not Python's two-line form
    pointing at the launcher."""
    result = subprocess.run([sys.executable, "-m", "rnnlab", "train", "--dry-run", "--no-progress", "model.hidden=8",
                             "train.iterations=5", "train.warmup=10", "data.val_size=100"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "train.warmup=10" in line]
    assert len(warned) == 1 and warned[0].startswith("rnnlab: warning: train.warmup=10 iterations is the whole")
    assert "RuntimeWarning" not in result.stderr and "runpy" not in result.stderr
