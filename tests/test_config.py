"""Config validation, dotted overrides and TOML round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnlab.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    describe_model,
    load_toml,
    save_toml,
)
from rnnlab.errors import ConfigError
from rnnlab.presets import get_preset, list_presets, suite


def test_defaults_are_valid_and_row_mnist() -> None:
    cfg = RunConfig()
    assert cfg.data.view == "rows" and cfg.train.epochs > 0 and cfg.train.iterations == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelConfig(cell="transformer"), "choose one of: rnn, lstm, gru"),
        (lambda: ModelConfig(hidden=0), "model.hidden=0 is out of range"),
        (lambda: ModelConfig(layers=-2), "model.layers=-2"),
        (lambda: ModelConfig(dropout=1.0), "model.dropout"),
        (lambda: TrainConfig(lr=0.0), "train.lr=0.0 is out of range; it must be > 0"),
        (lambda: TrainConfig(batch_size=-1), "train.batch_size=-1"),
        (lambda: TrainConfig(iterations=100, epochs=2), "set exactly one budget"),
        (lambda: TrainConfig(iterations=0, epochs=0), "set exactly one budget"),
        (lambda: TrainConfig(optimizer="lbfgs"), "sgd, adam, adamw, rmsprop"),
        (lambda: RunConfig(seed=-1), "seed=-1"),
    ],
)
def test_bad_values_are_rejected_with_the_allowed_ones(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_overrides_parse_types_and_apply() -> None:
    cfg = apply_overrides(RunConfig(), ["model.cell=gru", "model.layers=2", "model.bidirectional=true",
                                        "train.lr=1e-3", "data.val_size=0", "seed=7"])
    assert (cfg.model.cell, cfg.model.layers, cfg.model.bidirectional) == ("gru", 2, True)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.data.val_size == 0 and cfg.seed == 7


def test_setting_one_budget_clears_the_other() -> None:
    cfg = apply_overrides(RunConfig(), ["train.iterations=300"])
    assert (cfg.train.iterations, cfg.train.epochs) == (300, 0)
    back = apply_overrides(cfg, ["train.epochs=2"])
    assert (back.train.iterations, back.train.epochs) == (0, 2)
    # So in a config file written by hand: the one budget it gives replaces the default one
    from rnnlab.config import from_dict

    assert (from_dict({"train": {"iterations": 20}}).train.epochs, from_dict({"train": {"epochs": 2}}).train.iterations,
            from_dict({"train": {"iterations": 0}}).train.epochs) == (0, 0, 5)
    with pytest.raises(ConfigError, match="set exactly one budget: train.iterations=20, train.epochs=3"):
        from_dict({"train": {"iterations": 20, "epochs": 3}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.foo=1", "unknown key 'model.foo'; valid keys at \\[model\\]: model.cell"),
        ("optim.lr=1", "unknown key 'optim.lr'; sections are: data, model, train"),
        ("model.hidden=big", "expected a whole number"),
        ("train.lr=fast", "expected a number"),
        ("model.bidirectional=maybe", "expected a boolean"),
        ("model.hidden", "is not KEY=VALUE"),
        ("model.hidden=-5", "model.hidden=-5 is out of range"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(get_preset("dlw-lstm-b").config, ["train.lr=0.05", "name=mine"])
    save_toml(cfg, tmp_path / "config.toml")
    assert load_toml(tmp_path / "config.toml") == cfg


def test_toml_with_unknown_key_or_bad_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\ncell = "lstm"\nsize = 3\n')
    with pytest.raises(ConfigError, match="unknown key\\(s\\) model.size"):
        load_toml(path)
    path.write_text('[model]\nhidden = "big"\n')
    with pytest.raises(ConfigError, match="c.toml: model.hidden='big' is a string; expected a whole number$"):
        load_toml(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_toml(tmp_path / "missing.toml")


def test_a_config_built_in_python_holds_builtin_types(tmp_path: Path) -> None:
    """NumPy's float64 (a sweep's np.logspace) is a float: kept as it was, it was pickled into the
    checkpoint, which torch.load(weights_only=True) then refused, so the run could be neither loaded
    nor resumed. An int for a float field is a float, as from TOML."""
    import dataclasses
    import enum
    import pickle

    import numpy as np

    class Cell(str, enum.Enum):
        GRU = "gru"

    config = RunConfig(model=ModelConfig(cell=Cell.GRU), train=TrainConfig(lr=np.logspace(-3, -2, 3)[1], gamma=1))
    assert type(config.train.lr) is float and type(config.train.gamma) is float and config.train.gamma == 1.0
    assert type(config.model.cell) is str and config.model.cell == "gru"
    assert "numpy" not in str(pickle.dumps(dataclasses.asdict(config)))
    save_toml(config, tmp_path / "config.toml")
    assert load_toml(tmp_path / "config.toml") == config


def test_tutorial_presets_match_the_tutorials() -> None:
    names = suite("tutorials")
    assert names == ["dlw-rnn-a", "dlw-rnn-b", "dlw-rnn-c", "dlw-lstm-a", "dlw-lstm-b", "dlw-lstm-c", "rnn-allsteps"]
    a = get_preset("dlw-rnn-a")
    assert describe_model(a.config.model) == "rnn-relu-1x100"
    assert (a.config.train.optimizer, a.config.train.lr, a.config.train.batch_size, a.config.train.iterations) == (
        "sgd", 0.01, 100, 3000)
    assert a.config.train.protocol == "tutorial" and a.config.data.val_size == 0 and a.reported_accuracy == 92.48
    allsteps = get_preset("rnn-allsteps").config
    assert (allsteps.model.readout, allsteps.model.hidden, allsteps.train.batch_size, allsteps.train.epochs) == (
        "all", 256, 64, 3)
    for name in list_presets():
        assert get_preset(name).config.preset == name


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid presets: dlw-rnn-a"):
        get_preset("dlw-rnn-z")


def test_tutorial_presets_keep_the_tutorials_plain_recipe() -> None:
    # rnnlab's defaults are a better recipe (standardised input, orthogonal init, Adam, clipping);
    # a tutorial preset must not inherit any of it.
    for name in suite("tutorials"):
        cfg = get_preset(name).config
        assert cfg.model.init == "default" and not cfg.data.standardize, name
        assert cfg.train.clip == 0 and cfg.train.schedule == "none" and cfg.train.warmup == 0, name
        assert cfg.train.momentum == 0 and cfg.train.weight_decay == 0, name


@pytest.mark.parametrize("threads", [1025, 5000])
def test_thread_counts_above_the_bound_are_refused(threads: int) -> None:
    # torch segfaults on some large counts (5000) instead of raising; refuse them up front.
    with pytest.raises(ConfigError, match=f"train.threads={threads} is out of range; it must be <= 1024"):
        apply_overrides(RunConfig(), [f"train.threads={threads}"])
    assert apply_overrides(RunConfig(), ["train.threads=1024"]).train.threads == 1024


@pytest.mark.parametrize("key", ["train.lr", "train.momentum", "train.weight_decay", "train.gamma", "train.clip",
                                 "train.label_smoothing", "model.dropout"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_in_overrides(key: str, text: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}={text} is not a finite number"):
        apply_overrides(RunConfig(), [f"{key}={text}"])


def test_non_finite_floats_are_refused_in_python_and_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.lr=inf is not a finite number"):
        TrainConfig(lr=float("inf"))
    with pytest.raises(ConfigError, match="model.dropout=nan is not a finite number"):
        ModelConfig(dropout=float("nan"))
    path = tmp_path / "c.toml"
    path.write_text("[train]\nweight_decay = inf\n")
    with pytest.raises(ConfigError, match="train.weight_decay=inf is not a finite number"):
        load_toml(path)


@pytest.mark.parametrize("key", ["seed", "data.permutation_seed"])
def test_seeds_must_fit_in_64_bit_signed(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}=99999999999999999999 is out of range; it must be <= "):
        apply_overrides(RunConfig(), [f"{key}=99999999999999999999"])
    with pytest.raises(ConfigError, match=f"{key}=-1 is out of range; it must be >= 0"):
        apply_overrides(RunConfig(), [f"{key}=-1"])
    config = apply_overrides(RunConfig(), ["data.view=permuted-pixels", f"{key}={2**63 - 1}"])
    assert (config.seed if key == "seed" else config.data.permutation_seed) == 2**63 - 1


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "a\\b", "..", ".hidden", "-x", "a b", "x" * 101])
def test_run_names_must_be_plain_folder_names(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot be a folder name; use up to 100 letters, digits"):
        apply_overrides(RunConfig(), [f"name={name}"])
    with pytest.raises(ConfigError, match="preset=.* cannot be a folder name"):
        RunConfig(preset=name)


def test_plain_run_names_are_kept() -> None:
    for name in ("mine", "lstm-2x100_v1.5", "A+B", "x" * 100):
        assert apply_overrides(RunConfig(), [f"name={name}"]).label == name
    assert apply_overrides(RunConfig(name="mine"), ["name="]).name == ""


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (RunConfig(), "model.hidden=3", r"overrides must be a list of 'key=value' strings, got a str: wrap it "
                                        r"in a list, \['model.hidden=3'\]"),
        (RunConfig(), None, "overrides must be a list of 'key=value' strings, got None"),
        (RunConfig(), [3], "override 3 is an int, not a 'key=value' string"),
        ({"model": {}}, ["model.hidden=3"], r"apply_overrides needs a RunConfig, not a dict; pass "
                                            r"rnnlab.RunConfig\(\), rnnlab.get_preset\(name\).config .*"
                                            r"rnnlab.config.from_dict\(settings\)"),
        (get_preset("dlw-lstm-a"), [], r"pass the preset's .config: rnnlab.get_preset\(name\).config"),
    ],
)
def test_apply_overrides_refuses_wrong_argument_types(config, overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(config, overrides)
    assert apply_overrides(RunConfig(), ("model.hidden=3",)).model.hidden == 3  # a tuple is fine


def test_toml_errors_do_not_assume_a_config_option(tmp_path: Path) -> None:
    # load_toml also serves `rnnlab compare` and reports, which have no --config option.
    (tmp_path / "bad.toml").write_text("x = [\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML \(.*\); fix the file$"):
        load_toml(tmp_path / "bad.toml")
    save_toml(RunConfig(), tmp_path / "config.toml")
    with pytest.raises(ConfigError, match=f"is a folder, not a config file; give a .toml file, e.g. "
                                          f"{tmp_path / 'config.toml'}"):
        load_toml(tmp_path)


def test_configs_built_in_python_check_their_types() -> None:
    from rnnlab.config import TrainConfig

    with pytest.raises(ConfigError, match=r"^seed='abc' is a string; expected a whole number$"):
        RunConfig(seed="abc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train.lr='0.1' is a string; expected a number, e.g. lr = 0.1$"):
        TrainConfig(lr="0.1")  # type: ignore[arg-type]
    assert TrainConfig(lr=1).lr == 1  # an int is a fine float


def test_overrides_that_the_rest_of_the_config_would_ignore_are_refused() -> None:
    """preset= only labels a run; a tutorial-protocol run holds out no validation split."""
    from rnnlab import get_preset

    with pytest.raises(ConfigError, match=r"to start from one, use rnnlab\.get_preset\(NAME\)\.config$"):
        apply_overrides(RunConfig(), ["preset=dlw-rnn-a"])
    tutorial = get_preset("dlw-lstm-a").config
    with pytest.raises(ConfigError, match=r"holds out no validation split .* add train.protocol=standard"):
        apply_overrides(tutorial, ["data.val_size=500"])
    assert apply_overrides(tutorial, ["data.val_size=500", "train.protocol=standard"]).data.val_size == 500


@pytest.mark.parametrize(("toml", "message"), [
    ('[model]\nhidden = "64"\n', "model.hidden='64' is a string; expected a whole number, e.g. hidden = 64"),
    ("[model]\nhidden = 64.0\n", "model.hidden=64.0 is a decimal number; expected a whole number, e.g. hidden = 64"),
    ("[model]\nhidden = 1.5\n", "model.hidden=1.5 is a decimal number; expected a whole number"),
    ('[model]\nbidirectional = "yes"\n', "model.bidirectional='yes' is a string; expected true or false, "
                                          "e.g. bidirectional = true"),
    ('[train]\nlr = "1e-3"\n', "train.lr='1e-3' is a string; expected a number, e.g. lr = 0.001"),
    ("[model]\ncell = 3\n", "model.cell=3 is an integer; expected a string in quotes"),
    ('seed = "3"\n', "seed='3' is a string; expected a whole number, e.g. seed = 3"),
])
def test_a_wrong_type_in_a_config_file_names_the_file_and_the_fix(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert str(caught.value) == f"{path}: {message}"


def test_compare_names_the_config_file_with_a_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rnnlab.cli import main

    good, bad = tmp_path / "my.toml", tmp_path / "bad.toml"
    good.write_text("[model]\nhidden = 64\n")
    bad.write_text('[model]\nhidden = "64"\n')
    assert main(["compare", str(good), str(bad), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: {bad}: model.hidden='64' is a string; expected a whole "
                                       "number, e.g. hidden = 64\n")


def test_a_sequence_file_config_switched_to_images_is_told_how(tmp_path: Path) -> None:
    from rnnlab.config import RunConfig, apply_overrides

    path = tmp_path / "f.npz"
    cfg = apply_overrides(RunConfig(), ["data.dataset=file", f"data.file={path}"])
    with pytest.raises(ConfigError, match=r"only read with data.dataset=file \(now 'mnist'\); .*clear it: data\.file=\)$"):
        apply_overrides(cfg, ["data.dataset=mnist"])
    assert apply_overrides(cfg, ["data.dataset=mnist", "data.file="]).data.file == ""


def test_dropout_on_one_layer_is_refused_where_given_and_silent_where_saved() -> None:
    import warnings

    from rnnlab.config import RunConfig, apply_overrides
    from rnnlab.models.fast import make_recurrent

    with pytest.raises(ConfigError, match=r"^model.dropout drops out between stacked layers.*add model.layers=2$"):
        apply_overrides(RunConfig(), ["model.dropout=0.3"])
    assert apply_overrides(RunConfig(), ["model.dropout=0.3", "model.layers=2"]).model.dropout == 0.3
    with warnings.catch_warnings():  # a saved config may hold it: torch.nn's own warning is not shown
        warnings.simplefilter("error")
        for impl in ("torch", "fast"):
            assert make_recurrent("lstm", 3, 4, num_layers=1, dropout=0.3, impl=impl).dropout == 0.0


@pytest.mark.parametrize("given, message, used, switch", [
    (["model.cell=lstm", "model.nonlinearity=relu"], r"^model.nonlinearity is the Elman RNN's \(model.cell=rnn\); "
     r"an LSTM has its own gates: drop it, or add model.cell=rnn$", ["model.cell=rnn", "model.nonlinearity=relu"],
     "model.cell=lstm"),
    (["model.cell=gru", "model.nonlinearity=tanh"], "a GRU has its own gates", None, None),
    (["data.permutation_seed=3"], r"^data.permutation_seed orders the pixels of data.view=permuted-pixels; this run "
     r"reads rows: drop it, or add data.view=permuted-pixels$", ["data.view=permuted-pixels", "data.permutation_seed=3"],
     "data.view=pixels"),
    (["train.optimizer=adam", "train.momentum=0.9"], r"^train.momentum is SGD's and RMSprop's; "
     r"train.optimizer=adam keeps its own moments", ["train.optimizer=rmsprop", "train.momentum=0.9"],
     "train.optimizer=adamw"),
    (["train.schedule=cosine", "train.gamma=0.1"], r"^train.gamma is for train.schedule=step; this run's schedule "
     r"is cosine: drop it, or add train.schedule=step$", ["train.schedule=step", "train.gamma=0.1"],
     "train.schedule=none"),
    (["train.step_size=10"], r"^train.step_size is for train.schedule=step", ["train.schedule=step",
                                                                            "train.step_size=10"], "train.schedule=cosine"),
])
def test_a_setting_the_rest_of_the_config_would_ignore_is_refused(given: list[str], message: str,
                                                                  used: list[str] | None, switch: str | None) -> None:
    # compare would otherwise train one model under several names (--sweep model.nonlinearity=... on an LSTM)
    from rnnlab.config import RunConfig, apply_overrides, to_dict

    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), given)
    if used:  # where the rest of the config uses it, it is taken; a saved config that holds it is not judged
        saved = apply_overrides(RunConfig(), used)
        section, _, name = used[-1].partition("=")[0].partition(".")
        value = to_dict(saved)[section][name]
        assert to_dict(apply_overrides(saved, [switch]))[section][name] == value


def test_a_config_built_in_python_is_judged_by_the_settings_it_changes() -> None:
    """What an override would be refused for, a config built in Python (or loaded) is found to hold:
    ``rnnlab.train`` warns of it. The presets hold none."""
    from rnnlab.config import RunConfig, apply_overrides, to_dict
    from rnnlab.config_ignored import unused_settings

    default = to_dict(RunConfig())
    held = apply_overrides(RunConfig(), ["model.cell=gru", "model.nonlinearity=relu", "train.momentum=0.9",
                                         "train.gamma=0.1"], refuse_unused=False)
    problems = unused_settings(to_dict(held), default)
    assert [problem.split(" ")[0] for problem in problems] == ["model.nonlinearity", "train.momentum", "train.gamma"]
    assert "a GRU has its own gates" in problems[0]
    used = apply_overrides(RunConfig(), ["model.cell=rnn", "model.nonlinearity=relu", "train.optimizer=sgd",
                                         "train.momentum=0.9", "train.schedule=step", "train.gamma=0.1"])
    assert unused_settings(to_dict(used), default) == []
    for name in list_presets():
        assert unused_settings(to_dict(get_preset(name).config), default) == [], name


def test_config_sections_must_be_their_dataclasses_and_layers_are_capped() -> None:
    from rnnlab.config import ModelConfig, RunConfig, apply_overrides

    for kwargs, message in ((dict(model={"hidden": 8}), r"RunConfig\(model=...\) takes a ModelConfig, not a dict"),
                            (dict(data="mnist"), r"RunConfig\(data=...\) takes a DataConfig, not a str"),
                            (dict(train=None), r"RunConfig\(train=...\) takes a TrainConfig, not None")):
        with pytest.raises(ConfigError, match=message):
            RunConfig(**kwargs)
    assert RunConfig(model=ModelConfig(hidden=8)).model.hidden == 8
    with pytest.raises(ConfigError, match=r"^model.layers=100000 is out of range; it must be <= 128$"):
        apply_overrides(RunConfig(), ["model.layers=100000"])


def test_a_numpy_scalar_is_named_as_one() -> None:
    import numpy as np

    from rnnlab.config import RunConfig

    with pytest.raises(ConfigError, match=r"seed=np.int64\(3\) is a numpy int64 scalar \(int\(x\) or float\(x\)"):
        RunConfig(seed=np.int64(3))


def test_compare_refuses_a_sweep_or_override_the_entries_would_ignore() -> None:
    from rnnlab.entries import resolve_entries

    with pytest.raises(ConfigError, match="model.nonlinearity is the Elman RNN's"):
        resolve_entries(["dlw-lstm-a"], sweeps=["model.nonlinearity=tanh,relu"])
    with pytest.raises(ConfigError, match="every entry would ignore a setting given: data.permutation_seed"):
        resolve_entries(["dlw-lstm-a", "dlw-rnn-a"], overrides=["data.permutation_seed=2"])
    entries = resolve_entries(["dlw-lstm-a", "dlw-rnn-a"], overrides=["model.nonlinearity=tanh"])  # the RNN's
    assert [e.config.model.nonlinearity for e in entries] == ["tanh", "tanh"]


def test_data_paths_may_be_path_objects_from_python(tmp_path: Path) -> None:
    from rnnlab.config import DataConfig

    config = DataConfig(dataset="file", file=tmp_path / "x.npz")
    assert config.file == str(tmp_path / "x.npz") and isinstance(config.file, str)
    assert DataConfig(data_dir=tmp_path).data_dir == str(tmp_path)


def test_only_cuda_takes_a_device_index() -> None:
    for device, fix in (("cuda:abc", "use cuda or cuda:N"), ("cpu:0", "use cpu"), ("mps:0", "use mps")):
        with pytest.raises(ConfigError, match=rf"train.device='{device}': only cuda takes an index .*; {fix}$"):
            apply_overrides(RunConfig(), [f"train.device={device}"])
    assert apply_overrides(RunConfig(), ["train.device=cuda:1"]).train.device == "cuda:1"
