"""The top-level package: its public names load on first use, so the command line starts fast."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
