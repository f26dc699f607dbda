"""A model of one's own (``rnnlab.register_model``): trained, resumed, loaded, compared and exported
by rnnlab as its own cells are, from Python and from the command line (``--import``)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab.config import REGISTERED_CELLS, RunConfig, apply_overrides
from rnnlab.errors import ConfigError
from rnnlab.models import own, registry

TINY = ["train.device=cpu", "model.hidden=16", "train.batch_size=50", "train.iterations=40", "train.eval_every=20",
        "train.eval_batch_size=2000", "data.val_size=1000", "train.threads=1"]

# An IndRNN (Li et al., 2018): h_t = relu(W x_t + u * h_{t-1} + b), each unit its own recurrence.
CELL_FILE = '''
import torch
from torch import nn

import rnnlab


class IndRNN(nn.Module):
    def __init__(self, input_size, hidden, layers):
        super().__init__()
        sizes = [input_size] + [hidden] * layers
        self.inputs = nn.ModuleList(nn.Linear(a, hidden) for a in sizes[:-1])
        self.recurrent = nn.ParameterList(nn.Parameter(torch.rand(hidden)) for _ in range(layers))

    def forward(self, x):
        for linear, u in zip(self.inputs, self.recurrent):
            projected = linear(x)  # (B, T, H)
            h = projected.new_zeros(projected.shape[0], projected.shape[2])
            states = []
            for t in range(projected.shape[1]):
                h = torch.relu(projected[:, t] + u * h)
                states.append(h)
            x = torch.stack(states, dim=1)  # (B, T, H)
        return x, None


@rnnlab.register_model("indrnn", "IndRNN (Li et al., 2018)")
def build_indrnn(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
    return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                     input_mean=input_mean, input_std=input_std,
                                     recurrent=IndRNN(input_size, config.hidden, config.layers))
'''


@pytest.fixture
def indrnn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``my_cells.py`` imported (it registers ``indrnn``); forgotten again after the test."""
    monkeypatch.setattr(own, "_IMPORTED", [])
    path = tmp_path / "my_cells.py"
    path.write_text(CELL_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it registers a model: nothing to say
        own.import_models(str(path))
    yield path
    registry.unregister_model("indrnn")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_a_model_of_ones_own_trains_resumes_and_predicts(indrnn: Path, tmp_path: Path) -> None:
    assert "indrnn" in rnnlab.list_models() and "indrnn" in REGISTERED_CELLS
    cfg = apply_overrides(RunConfig(), [*TINY, "model.cell=indrnn", "model.nonlinearity=relu"])  # its to read
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    assert whole.status == "completed" and whole.summary["model"] == "indrnn"
    assert whole.summary["backward"] == "autograd"  # rnnlab's hand-written step is for its own layers
    assert whole.test_accuracy > 13  # percent, chance 10: it learns (40 steps of batch 50; seeded, so fixed)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=13)
    resumed = rnnlab.resume(part.dir, progress=False)
    a, b = _weights(whole.dir), _weights(resumed.dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise: as never stopped
    assert resumed.test_accuracy == whole.test_accuracy
    trained = rnnlab.load(whole.dir)
    images = torch.rand(5, 28, 28)
    with torch.no_grad():
        logits = trained.model(images)  # (B, C)
    assert [p["class"] for p in trained.predict(images.numpy())] == logits.argmax(1).tolist()
    assert round(trained.evaluate()["test_accuracy"], 4) == whole.test_accuracy


def test_what_rnnlab_cannot_know_of_a_model_of_ones_own(indrnn: Path) -> None:
    from rnnlab.gradients import gradient_flow
    from rnnlab.models import create_model, flops_per_sample
    from rnnlab.models.size import check_model_size

    config = apply_overrides(RunConfig(), ["model.cell=indrnn", "model.hidden=8"]).model
    model = create_model(config, input_size=28, seq_len=28, num_classes=10)
    assert flops_per_sample(model) is None
    assert check_model_size(config, input_size=28, seq_len=28, num_classes=10) is None
    with pytest.raises(ConfigError, match=r"unrolls rnnlab's own cells .* model.cell='indrnn' is a model of your own"):
        gradient_flow(model, torch.rand(2, 28, 28), torch.tensor([0, 1]))


def test_mistakes_in_a_model_of_ones_own_are_named_where_they_are_made(indrnn: Path) -> None:
    from torch import nn

    from rnnlab.models import create_model, register_model, unregister_model

    with pytest.raises(ConfigError, match=r"model.cell='lstm2' is not valid; choose one of: rnn, lstm, gru, indrnn "
                                          r"\(a model of your own is registered with rnnlab.register_model"):
        apply_overrides(RunConfig(), ["model.cell=lstm2"])
    with pytest.raises(ConfigError, match=r"model 'lstm' is already registered \(by rnnlab\)"):
        register_model("lstm", "mine")(lambda **kwargs: None)
    with pytest.raises(ConfigError, match=r"model 'indrnn' is already registered \(by .*my_cells\.py:build_indrnn\)"):
        register_model("indrnn", "another")(lambda **kwargs: None)
    with pytest.raises(ConfigError, match=r"one of rnnlab's own models"):
        unregister_model("gru")
    for bad in ("a=b", "a,b", " indrnn", "", None, "my/cell", "../up", ".hidden", "a b", "x\ny"):
        # A name that is no plain folder name would have put runs outside runs/ (runs/../up-1x8-...)
        with pytest.raises(ConfigError, match=r"^register_model: the name must be a non-empty string of up to 100 "):
            register_model(bad, "bad")
    assert "my/cell" not in registry.list_models()

    def build(kind: str):  # builders of wrong kinds, each under the name "broken"
        if kind == "signature":
            return lambda *, config, input_size: None
        def builder(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
            if kind == "module":
                return nn.GRU(input_size, config.hidden, batch_first=True)
            recurrent = {"shape": nn.GRU(input_size, config.hidden + 1, batch_first=True),
                         "fails": nn.Linear(3, 3), "none": None}[kind]
            return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                             recurrent=recurrent)
        return builder

    config = apply_overrides(RunConfig(), ["model.cell=indrnn", "model.hidden=8"]).model
    from dataclasses import replace

    for kind, message in (("module", r"its builder returned a GRU; it must return rnnlab.models.SequenceClassifier"),
                          ("shape", r"must return the states \(B, T, 8\) .* its states were \(3, 28, 9\)"),
                          ("fails", r"its recurrent module failed on an input of shape \(3, 28, 28\) \(B, T, F\): "
                                    r"RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
                          ("signature", r"its builder must take the keyword arguments config, input_size, seq_len, "
                                        r"num_classes, input_mean, input_std .*unexpected keyword argument"),
                          ("none", r"model.cell='broken' is a model of your own: its builder must pass")):
        register_model("broken", "a mistake")(build(kind))
        try:
            with pytest.raises(ConfigError, match=message):
                create_model(replace(config, cell="broken"), input_size=28, seq_len=28, num_classes=10)
        finally:
            unregister_model("broken")
    assert "broken" not in rnnlab.list_models() and "broken" not in REGISTERED_CELLS


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11's")
def test_a_model_of_ones_own_that_fails_in_training_keeps_its_traceback_with_rnnlabs_context(tmp_path: Path) -> None:
    """What the trial at build time cannot see (here: training mode) fails in the run with the user's
    own exception and traceback, and a note of where in the run it came and what the folder keeps."""
    from torch import nn

    from rnnlab.models import register_model, unregister_model

    class TrainsBadly(nn.GRU):
        def forward(self, x, h=None):
            if self.training:
                raise ValueError("no training mode in this module")
            return super().forward(x, h)

    @register_model("trains-badly", "fails in training mode only")
    def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
        return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                         input_mean=input_mean, input_std=input_std,
                                         recurrent=TrainsBadly(input_size, config.hidden, batch_first=True))

    config = apply_overrides(RunConfig(), [*TINY, "model.cell=trains-badly"])
    try:
        with pytest.raises(ValueError, match="no training mode in this module") as failed:
            rnnlab.train(config, tmp_path / "run", progress=False)
        assert failed.value.__notes__ == ["rnnlab: model 'trains-badly', a model of your own, failed in training "
                                          "step 1; no checkpoint had been written"]
        assert failed.traceback[-1].name == "forward"  # the user's own line, last
        # What fails outside the model's own code is not laid at its door (here: saving the checkpoint,
        # failing in a function of no file of the model's: not one defined in this test file).
        TrainsBadly.forward = nn.GRU.forward
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("rnnlab.engine.Trainer.save", functools.partial(os.remove, tmp_path / "no-such-file"))
            with pytest.raises(FileNotFoundError) as elsewhere:
                rnnlab.train(config, tmp_path / "run2", progress=False)
        assert not hasattr(elsewhere.value, "__notes__")
    finally:
        unregister_model("trains-badly")


def test_registering_again_from_the_same_function_replaces_it(indrnn: Path) -> None:
    """A notebook cell run twice, or a module imported under a second name."""
    builder = registry.get_builder("indrnn")
    registry.register_model("indrnn", "again")(builder)
    assert registry.model_summaries()["indrnn"] == "again" == REGISTERED_CELLS["indrnn"]


def test_import_models_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(own, "_IMPORTED", [])
    with pytest.raises(ConfigError, match=r"cannot import .*nowhere.py: no such file"):
        own.import_models(str(tmp_path / "nowhere.py"))
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    path_before = list(sys.path)
    with pytest.raises(ConfigError, match=r"cannot import .*syntax.py \(line 1\): SyntaxError"):
        own.import_models(str(tmp_path / "syntax.py"))
    assert "syntax" not in sys.modules and sys.path == path_before  # a failed import leaves no half module behind
    with pytest.raises(ConfigError, match=r"cannot import no_such_module_xyz: ModuleNotFoundError"):
        own.import_models("no_such_module_xyz")
    assert own.imported_models() == []


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnlab", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_the_command_line_trains_compares_and_exports_a_model_of_ones_own(tmp_path: Path) -> None:
    (tmp_path / "my_cells.py").write_text(CELL_FILE)
    settings = ["model.cell=indrnn", "model.hidden=8", "train.iterations=10", "train.eval_every=10",
                "data.val_size=500", "train.threads=1", "train.device=cpu"]
    listed = run_cli("models", "--import", "my_cells.py", cwd=tmp_path)
    assert listed.returncode == 0 and "indrnn IndRNN (Li et al., 2018)" in listed.stdout, listed.stderr
    trained = run_cli("train", "--import", "my_cells.py", "--no-progress", "--out", "run", *settings, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    alone = run_cli("eval", "run", "--no-plot", cwd=tmp_path)  # without --import: say what to do
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert "model.cell='indrnn' is not valid" in alone.stderr and "rnnlab --import" in alone.stderr
    reported = run_cli("report", "run", "--out", "report", cwd=tmp_path)  # its settings unread: not pooled
    assert reported.returncode == 2 and "run/config.toml: model.cell='indrnn' is not valid" in reported.stderr
    evaluated = run_cli("--import", "my_cells.py", "eval", "run", "--no-plot", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads(evaluated.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.01)
    # A compare's workers are new processes: they import the file too.
    compared = run_cli("--import", str(tmp_path / "my_cells.py"), "compare", "run/config.toml", "--seeds", "2",
                       "--jobs", "2", "--out", "cmp", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [(row["architecture"], row["completed"]) for row in rows["entries"]] == [("indrnn-1x8", 2)], rows
    # The export unrolls its Python loop over the steps: T is fixed, and the check passes.
    exported = run_cli("export", "run", "--import", "my_cells.py", "--format", "torchscript", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert report["dynamic_steps"] is False and report["same_classes"] == 1.0


def test_the_trial_at_build_leaves_the_module_as_built_and_takes_states_alone(indrnn: Path) -> None:
    """The build-time trial runs in eval mode (a BatchNorm's statistics stay as built), at the
    trained length, and a module may return its states alone instead of a tuple."""
    from dataclasses import replace

    from torch import nn

    from rnnlab.models import create_model, register_model, unregister_model

    class Normed(nn.Module):
        def __init__(self, features: int, hidden: int) -> None:
            super().__init__()
            self.norm, self.rnn = nn.BatchNorm1d(features), nn.GRU(features, hidden, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B, T, F) -> (B, F, T) -> (B, T, F)
            return self.rnn(x)[0]  # (B, T, H) alone

    @register_model("normed", "BatchNorm, then a GRU")
    def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
        return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                         recurrent=Normed(input_size, config.hidden))

    try:
        config = replace(apply_overrides(RunConfig(), ["model.hidden=8"]).model, cell="normed")
        model = create_model(config, input_size=5, seq_len=7, num_classes=3)
        assert int(model.rnn.norm.num_batches_tracked) == 0 and model.training
        assert model(torch.rand(4, 7, 5)).shape == (4, 3)
    finally:
        unregister_model("normed")


def test_what_a_model_of_ones_own_is_refused(indrnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import numpy as np

    from rnnlab.compare import execute
    from rnnlab.errors import UnknownModelError
    from rnnlab.pool import Task

    # Settings for rnnlab's own layers, given to a model of one's own.
    for override in ("model.impl=torch", "model.init=identity"):
        with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]} is for rnnlab's own cells .* drop it"):
            apply_overrides(RunConfig(), ["model.cell=indrnn", override])
    # Bidirectional on sequences of varying length: its reverse direction would read the padding first.
    rng = np.random.default_rng(0)
    x, lengths = rng.normal(size=(40, 6, 2)).astype(np.float32), rng.integers(2, 7, 40)
    np.savez(tmp_path / "v.npz", x_train=x, y_train=np.arange(40) % 2, lengths_train=lengths, x_test=x[:10],
             y_test=np.arange(10) % 2, lengths_test=lengths[:10])
    cfg = apply_overrides(RunConfig(), ["model.cell=indrnn", "model.bidirectional=true", "model.hidden=4",
                                        "data.dataset=file", f"data.file={tmp_path / 'v.npz'}", "data.val_size=0",
                                        "train.iterations=2", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"model.cell=indrnn is a model of your own, and its reverse direction "
                                          r"would read the padding"):
        rnnlab.train(cfg, tmp_path / "bi", progress=False)
    # A config made while the model was registered, trained where it is not.
    builder = registry.get_builder("indrnn")
    registry.unregister_model("indrnn")
    try:
        with pytest.raises(UnknownModelError, match=r"model.cell='indrnn' is not valid; .* rnnlab --import"):
            rnnlab.train(cfg, tmp_path / "gone", progress=False)
    finally:
        registry.register_model("indrnn", "IndRNN")(builder)
    # Registered in an interactive __main__ (a notebook): a compare's workers could not import it.
    monkeypatch.setattr(builder, "__module__", "__main__")
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # no __file__, as in a notebook
    with pytest.raises(ConfigError, match=r"model 'indrnn' is registered in this interactive session's __main__"):
        execute([Task("e", 0, cfg, str(tmp_path / "e"))], jobs=1)


def test_import_models_by_module_name_from_the_current_folder_and_without_shadowing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rnnlab --import pkg.cells` finds pkg under the current folder, as `python -m` would; a file named
    after an installed module (json.py) is imported under a name of its own, leaving that module be."""
    monkeypatch.setattr(own, "_IMPORTED", [])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "pkg_of_cells").mkdir()
    (tmp_path / "pkg_of_cells" / "__init__.py").write_text("")
    (tmp_path / "pkg_of_cells" / "cells.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    with pytest.warns(UserWarning, match=r"^pkg_of_cells.cells registered no model: decorate a builder in it with "
                                         r"@rnnlab.register_model\(name, summary\)"):
        own.import_models("pkg_of_cells.cells")
    assert sys.modules["pkg_of_cells.cells"].LOADED and own.imported_models() == ["pkg_of_cells.cells"]
    assert sys.path == path_before  # the current folder was searched for it, and only for it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own.import_models("pkg_of_cells.cells")  # already imported: not run again, and nothing said again
    (tmp_path / "json.py").write_text("SHADOW = True\n")
    with pytest.warns(UserWarning, match=r"json.py registered no model"):
        own.import_models(str(tmp_path / "json.py"))
    import json as real_json

    assert not hasattr(real_json, "SHADOW") and hasattr(real_json, "dumps")
    for name in ("pkg_of_cells", "pkg_of_cells.cells"):
        monkeypatch.delitem(sys.modules, name)


def test_a_module_imported_again_under_another_name_is_not_said_to_register_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By module name, then by its file: run twice, it registers the same model again, from the same function."""
    monkeypatch.setattr(own, "_IMPORTED", [])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "pkg_again").mkdir()
    (tmp_path / "pkg_again" / "__init__.py").write_text("")
    (tmp_path / "pkg_again" / "cells.py").write_text(CELL_FILE)
    monkeypatch.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            own.import_models("pkg_again.cells")
            own.import_models(str(tmp_path / "pkg_again" / "cells.py"))
    finally:
        registry.unregister_model("indrnn")
        for name in ("pkg_again", "pkg_again.cells"):
            monkeypatch.delitem(sys.modules, name)


def test_the_resume_line_after_a_signal_imports_the_model_again() -> None:
    import argparse

    from rnnlab.cli import _how_to_continue

    args = argparse.Namespace(command="train", imports_first=["my cells.py"], imports=["pkg.cells"])
    assert _how_to_continue(args, None, Path("runs/x")) == ("; continue with: rnnlab --import 'my cells.py' "
                                                            "--import pkg.cells train --resume runs/x")


# A file of cells that imports a file beside it, as `python sib_cells.py` would find it.
SIBLING_CELLS = '''
import torch

import rnnlab
from sibling_words import WORD


@rnnlab.register_model("sibcell", f"a GRU {WORD}")
def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
    return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                     input_mean=input_mean, input_std=input_std,
                                     recurrent=torch.nn.GRU(input_size, config.hidden, batch_first=True))
'''


@pytest.fixture
def sibling_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``elsewhere/sib_cells.py`` (not imported), beside ``sibling_words.py`` and a ``data_of_theirs.py``;
    what importing it registers and imports is forgotten after the test."""
    monkeypatch.setattr(own, "_IMPORTED", [])
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "sibling_words.py").write_text("WORD = 'from the file beside it'\n")
    (folder / "data_of_theirs.py").write_text("")  # a data.py there: the caller's own must stay theirs
    (folder / "sib_cells.py").write_text(SIBLING_CELLS)
    yield (folder / "sib_cells.py").resolve()
    if "sibcell" in REGISTERED_CELLS:
        registry.unregister_model("sibcell")
    for name in ("sib_cells", "sibling_words"):
        sys.modules.pop(name, None)


def test_importing_a_file_leaves_sys_path_as_it_was(sibling_cells: Path) -> None:
    """Its imports of files beside it work while it runs; after, the caller's imports do not find that
    folder's files (which would shadow their own modules); a second import registers nothing again."""
    path_before, registered = list(sys.path), own._registrations
    own.import_models(str(sibling_cells))
    assert sys.path == path_before
    assert importlib.util.find_spec("data_of_theirs") is None
    assert registry.model_summaries()["sibcell"] == "a GRU from the file beside it"
    own.import_models(str(sibling_cells))  # already imported: not run again
    assert own._registrations == registered + 1 and own.imported_models() == [str(sibling_cells)]
    assert sys.path == path_before


@pytest.mark.slow  # a compare worker: another process
def test_a_compare_worker_imports_the_file_and_its_neighbours_again(sibling_cells: Path) -> None:
    """A worker starts with the compare's sys.path, which no longer holds the file's folder."""
    from concurrent.futures import ProcessPoolExecutor

    from rnnlab import pool

    own.import_models(str(sibling_cells))
    setup = (os.getpid(), str(sibling_cells.parent), None, 0, own.imported_models(), False)
    with ProcessPoolExecutor(max_workers=1, mp_context=pool._context(), initializer=pool._worker_setup,
                             initargs=setup) as workers:
        summaries = workers.submit(registry.model_summaries).result(timeout=120)
    assert summaries["sibcell"] == "a GRU from the file beside it"


def test_a_loaded_model_of_ones_own_keeps_the_values_its_builder_makes_outside_the_state_dict() -> None:
    """A non-persistent buffer or a tensor attribute is in no checkpoint: the model is rebuilt with its
    builder's values, not the uninitialised memory a meta build moved to the CPU would hold."""
    from torch import nn

    from rnnlab.models import create_model, register_model, unregister_model
    from rnnlab.model_state import build_from_state

    class Scaled(nn.Module):
        def __init__(self, features: int, hidden: int) -> None:
            super().__init__()
            self.rnn = nn.GRU(features, hidden, batch_first=True)
            self.register_buffer("scale", torch.full((features,), 3.0), persistent=False)
            self.shift = torch.full((features,), 0.5)  # a plain attribute

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x * self.scale + self.shift)[0]

    @register_model("scaled", "a GRU of scaled inputs")
    def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):
        return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len, num_classes=num_classes,
                                         recurrent=Scaled(input_size, config.hidden))

    try:
        config = apply_overrides(RunConfig(), ["model.cell=scaled", "model.hidden=4", "seed=0"])
        trained = create_model(config.model, input_size=3, seq_len=5, num_classes=2)
        state = trained.state_dict()
        assert "rnn.scale" not in state
        rng = torch.get_rng_state()
        loaded = build_from_state(config, state, input_shape={"steps": 5, "features": 3, "classes": 2})
        assert torch.equal(torch.get_rng_state(), rng)  # the rebuild draws from no stream of the caller's
        assert torch.equal(loaded.rnn.scale, torch.full((3,), 3.0)) and torch.equal(loaded.rnn.shift, trained.rnn.shift)
        x = torch.rand(2, 5, 3)
        assert torch.equal(loaded.eval()(x), trained.eval()(x))
    finally:
        unregister_model("scaled")


def test_a_notebook_cell_run_again_registers_its_builder_again() -> None:
    """IPython compiles each run of a cell under a name of its own (``<ipython-input-N-...>``; Jupyter
    names it by the cell's text, so an edited cell too): the builder, redefined in the same module
    under the same name, replaces the one registered before, as the docstring says."""
    cell = ("import rnnlab\n"
            "@rnnlab.register_model('celled', 'from a cell')\n"
            "def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, input_std=1.0):\n"
            "    return rnnlab.SequenceClassifier(config, input_size=input_size, seq_len=seq_len,\n"
            "                                     num_classes=num_classes)\n")
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(cell, "<ipython-input-3-5f2a1c7d0e11>", "exec"), namespace)
        exec(compile(cell.replace("from a cell", "fixed"), "<ipython-input-4-9b0c2e5a7d13>", "exec"), namespace)
        assert registry.get_builder("celled") is namespace["build"] and REGISTERED_CELLS["celled"] == "fixed"

        def build(**kwargs):  # another function of that name, in another module: refused still
            raise AssertionError

        with pytest.raises(ConfigError, match=r"model 'celled' is already registered \(by .*ipython-input-4"):
            registry.register_model("celled", "other")(build)
    finally:
        registry.unregister_model("celled")
