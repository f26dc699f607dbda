"""``rnnlab export``: ONNX and TorchScript exports that compute what eager PyTorch computes."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab.cli import main
from rnnlab.export import ExportError, export_run, load_exported

pytest_plugins = ["_fixtures_runs"]
pytestmark = pytest.mark.usefixtures("one_thread")

# Every cell, stacked and bidirectional layers, every readout, and the pixel views (784 steps).
CASES = {
    "rnn-tanh": ["model.cell=rnn", "model.nonlinearity=tanh"],
    "rnn-relu": ["model.cell=rnn", "model.nonlinearity=relu", "model.init=identity"],
    "lstm": ["model.cell=lstm"],
    "gru": ["model.cell=gru"],
    "lstm-2x-bidirectional": ["model.cell=lstm", "model.layers=2", "model.bidirectional=true"],
    "gru-mean": ["model.cell=gru", "model.readout=mean"],
    "rnn-all": ["model.cell=rnn", "model.readout=all"],
    "gru-bidirectional-all": ["model.cell=gru", "model.bidirectional=true", "model.readout=all"],
    "lstm-pixels": ["model.cell=lstm", "data.view=pixels"],
    "gru-permuted-pixels": ["model.cell=gru", "data.view=permuted-pixels"],
}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_parity_and_dynamic_shapes(untrained_run, case: str, fmt: str) -> None:
    run = untrained_run(["model.hidden=12", *CASES[case]])
    report = export_run(run, fmt, samples=64)  # the CLI default is 256; 64 real images suffice here
    assert Path(report.path).exists() and report.path.startswith(str(run))
    assert report.max_abs_diff <= 1e-4 and report.same_classes == 1.0
    readout_all = "all" in case
    assert report.dynamic_steps is not readout_all
    # The export was traced with a batch of 2; other batch sizes (and lengths) must work too. The
    # expected logits come from the ordinary loading path, not from the model the exporter traced.
    session, model = load_exported(report.path, fmt), rnnlab.load(run).model
    steps, features = (28, 28) if "pixels" not in case else (784, 1)
    lengths = [steps] if readout_all else [steps, steps // 4]
    for batch in (1, 5):
        for length in lengths:
            x = torch.rand(batch, length, features, generator=torch.Generator().manual_seed(batch + length))
            got = session(x.numpy())
            assert got.shape == (batch, 10)
            with torch.no_grad():
                np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


def test_export_of_a_trained_run_via_cli(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nested" / "model.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "sequences float32 (N, T, 28)" in text and "256 test images" in text
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary left
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--json", "--samples", "100"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["samples"] == 100 and report["max_abs_diff"] <= 1e-4 and report["same_classes"] == 1.0
    assert "warning" not in captured.err
    # Named like the other format: refused (test_an_out_named_for_the_other_format_is_refused).
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(tmp_path / "m.onnx"),
                 "--no-check"]) == 2
    assert "ends in .onnx, but --format torchscript writes TorchScript" in capsys.readouterr().err


def test_metadata_travels_with_the_model(untrained_run, tmp_path: Path) -> None:
    import onnx

    run = untrained_run(["model.hidden=8", "model.cell=gru", "data.view=permuted-pixels"])
    onnx_report = export_run(run, "onnx", tmp_path / "m.onnx", samples=16)
    proto = onnx.load(onnx_report.path)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["view"] == "permuted-pixels" and meta["steps"] == 784 and meta["classes"] == 10
    assert sorted(meta["permutation"]) == list(range(784))
    assert [i.name for i in proto.graph.input] == ["sequences"] and [o.name for o in proto.graph.output] == ["logits"]
    ts_report = export_run(run, "torchscript", tmp_path / "m.pt", samples=16)
    with zipfile.ZipFile(ts_report.path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/rnnlab.json"))
        assert json.loads(archive.read(name))["permutation"] == meta["permutation"]


def test_a_mismatch_is_an_error_and_writes_nothing(untrained_run, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.export as export

    run = untrained_run(["model.hidden=8"])
    out_dir = tmp_path / "out"
    real_writer = export.write_torchscript

    def broken_writer(model, example, path, dynamic_steps, metadata):  # exports different weights
        with torch.no_grad():
            model.head.bias.add_(0.01)
        try:
            real_writer(model, example, path, dynamic_steps, metadata)
        finally:
            with torch.no_grad():
                model.head.bias.sub_(0.02)  # and leaves eager PyTorch different from what was written

    monkeypatch.setattr(export, "write_torchscript", broken_writer)
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_run(run, "torchscript", out_dir / "m.pt", samples=16)
    assert list(out_dir.iterdir()) == []  # neither the file nor a temporary


def test_an_export_giving_nan_where_pytorch_does_not_is_a_mismatch(untrained_run, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.export as export

    real_load = export.load_exported

    def load_nan(path, fmt=None):  # an export whose logits come out NaN, with class 0 as PyTorch's argmax
        run = real_load(path, fmt)
        return lambda *inputs: np.full_like(run(*inputs), np.nan)

    monkeypatch.setattr(export, "load_exported", load_nan)
    with pytest.raises(ExportError, match=r"disagrees with PyTorch: max abs logit difference inf"):
        export_run(untrained_run(["model.hidden=8"]), "onnx", tmp_path / "m.onnx", samples=16)


def test_a_model_that_itself_gives_nan_is_refused_for_what_it_is(untrained_run, tmp_path: Path) -> None:
    run = untrained_run(["model.hidden=8"])
    tensors = torch.load(run / "checkpoint.pt", weights_only=True)
    tensors["model"]["input_std"].fill_(1e-40)  # x / std overflows: the model's own logits are NaN
    torch.save(tensors, run / "checkpoint.pt")
    with pytest.raises(ExportError, match=r"^the model itself gives NaN or infinite logits on test sequences"):
        export_run(run, "onnx", tmp_path / "m.onnx", samples=16)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_check_runs_in_chunks_and_counts_them_all(untrained_run, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.export as export

    run = untrained_run(["model.hidden=8"])
    whole = export_run(run, fmt, samples=50)
    batches: list[int] = []
    real_load = export.load_exported

    def recording_load(path, fmt=None):
        runner = real_load(path, fmt)
        return lambda x, *rest: batches.append(len(x)) or runner(x, *rest)

    monkeypatch.setattr(export, "load_exported", recording_load)
    monkeypatch.setattr(export, "CHUNK_STEPS", 28 * 16)  # 16 sequences of 28 steps a chunk
    chunked = export_run(run, fmt, samples=50)
    assert batches == [16, 16, 16, 2, 8]  # the 50 in chunks, then the 8 half-length prefixes
    assert chunked.samples == 50 and chunked.same_classes == 1.0
    assert chunked.max_abs_diff == pytest.approx(whole.max_abs_diff, abs=1e-6)


def test_missing_onnx_says_what_to_install(untrained_run, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    run = untrained_run(["model.hidden=8"])
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    assert main(["export", str(run)]) == 2
    assert "pip install 'rnnlab[export]'" in capsys.readouterr().err
    assert not (run / "model.onnx").exists()


def test_bad_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("samples", ["0", "-1"])
def test_cli_names_the_samples_flag_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture, samples: str) -> None:
    """The command line's error names the flag typed (--samples), as --images and --batch-size do, not
    the Python keyword."""
    assert main(["export", str(tmp_path / "nope"), "--samples", samples]) == 2
    assert capsys.readouterr().err == f"rnnlab: error: --samples={samples} must be >= 1\n"


def test_test_data_that_is_not_there_offers_no_check(untrained_run, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    # A run folder shared without its data: the check cannot be made, and --no-check is the way to
    # export without it.
    run = untrained_run(["model.hidden=8", f"data.data_dir={tmp_path / 'gone'}"])
    (tmp_path / "empty").mkdir()
    for where, fragment in [([], f"data folder {tmp_path / 'gone'} does not exist"),
                            (["--data-dir", str(tmp_path / "empty")], f"not found in {tmp_path / 'empty'}")]:
        assert main(["export", str(run), "--format", "torchscript", *where]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured.err
        assert captured.err.startswith("rnnlab: error: checking the export needs the run's test images: ")
        assert fragment in captured.err and captured.err.endswith(
            "; without them, --no-check exports unchecked\n"), captured.err
        assert not (run / "model.torchscript.pt").exists()
    assert main(["export", str(run), "--format", "torchscript", "--no-check"]) == 0
    assert "check  skipped (--no-check)" in capsys.readouterr().out


def test_test_data_that_is_there_but_wrong_says_how_to_mend_it_not_no_check(
        untrained_run, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = untrained_run(["model.hidden=8"])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", corrupt)
    images = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (corrupt / "t10k-images-idx3-ubyte.gz").write_bytes(images[:5000])  # a download cut short
    cases = [(corrupt, [f"{corrupt / 't10k-images-idx3-ubyte.gz'}: corrupt gzip stream",
                        "Re-download it or point --data-dir at a good copy"]),
             (mnist_dir / "t10k-images-idx3-ubyte.gz",  # the file given where its folder was meant
              [f"is a file; give a folder that holds the IDX files (t10k-images-idx3-ubyte.gz is one of them: "
               f"give its folder, {mnist_dir})"])]
    for data_dir, fragments in cases:
        assert main(["export", str(run), "--format", "torchscript", "--data-dir", str(data_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnlab: error: checking the export needs the run's test images: "), err
        assert all(fragment in err for fragment in fragments) and err.count("\n") == 1, err
        assert "--no-check" not in err and "check=False" not in err  # skipping the check mends nothing
        assert not (run / "model.torchscript.pt").exists()


def test_a_run_folders_own_files_are_never_overwritten(untrained_run, capsys: pytest.CaptureFixture) -> None:
    from rnnlab.checkpoint import CHECKPOINT_JSON, CHECKPOINT_PT
    from rnnlab.checkpoint import CONFIG, METRICS, SUMMARY

    run, other = untrained_run(["model.hidden=8"]), untrained_run(["model.hidden=8"])
    (run / SUMMARY).write_text("{}\n")
    (run / METRICS).write_text("{}\n")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    outs = [run / name for name in (CHECKPOINT_PT, CHECKPOINT_JSON, CONFIG, SUMMARY, METRICS)]
    outs += [run / "." / CHECKPOINT_PT, other / CHECKPOINT_PT]  # the same file by another path; another run's
    for out in outs:
        for force in ([], ["--force"]):  # --force replaces a stranger's file, never the run's own
            assert main(["export", str(run), "--format", "torchscript", "--no-check", "--out", str(out), *force]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"rnnlab: error: --out {out} is ") and err.count("\n") == 1
            assert "would destroy the run: give another file name, such as" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing changed, nothing added


def test_an_out_folder_is_named_as_given(untrained_run, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.export as export

    run, folder = untrained_run(["model.hidden=8"]), tmp_path / "folder"
    folder.mkdir()
    assert main(["export", str(run), "--no-check", "--out", str(folder)]) == 2
    assert capsys.readouterr().err == (f"rnnlab: error: --out {folder} is a directory; "
                                       f"give a file name such as {folder}/model.onnx\n")
    # A failure at the rename (a folder made meanwhile) names the user's path, not the temporary file.
    monkeypatch.setattr(export, "out_refusal", lambda *args, **kwargs: None)
    assert main(["export", str(run), "--no-check", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"rnnlab: error: cannot write {folder}: Is a directory; choose another --out\n"
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder", run.name]


def _victims(folder: Path) -> dict[str, Path]:
    """Files an export must not replace unasked: a run's training data (a zip, as TorchScript
    files are), a photo, and ONNX and TorchScript files that some other tool wrote."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True)
    files = {name: folder / name for name in ("good.npz", "photo.png", "other.onnx", "other.pt")}
    np.savez(files["good.npz"], x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.arange(3))
    files["photo.png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {"author": "someone", "rnnlab": "not our key"})
    onnx.save(proto, str(files["other.onnx"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own "deprecated" notes
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(files["other.pt"]),
                       _extra_files={"notes.json": json.dumps({"rnnlab_version": "but not our file name"})})
    return files


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_existing_file_that_is_no_export_is_replaced_only_with_force(
        untrained_run, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture) -> None:
    from rnnlab.export_paths import is_rnnlab_export

    run = untrained_run(["model.hidden=8"])
    victims = _victims(tmp_path / "victims")
    before = {name: path.read_bytes() for name, path in victims.items()}
    for name, path in victims.items():
        assert not is_rnnlab_export(path), name
        assert main(["export", str(run), "--format", fmt, "--no-check", "--out", str(path)]) == 2
        assert capsys.readouterr().err == (
            f"rnnlab: error: --out {path} exists and is not an rnnlab export: writing the export there would "
            "destroy it; choose another --out, or add --force to replace it\n")
    # Bytes unchanged, and no temporary file left beside them: refused before any work.
    assert {p.name: p.read_bytes() for p in victims["photo.png"].parent.iterdir()} == before
    assert main(["export", str(run), "--format", fmt, "--no-check", "--force", "--out", str(victims["photo.png"])]) == 0
    assert is_rnnlab_export(victims["photo.png"]) and f"wrote {victims['photo.png']}" in capsys.readouterr().out


def test_a_previous_export_is_replaced_without_force(untrained_run, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from rnnlab.export_paths import is_rnnlab_export

    run = untrained_run(["model.hidden=8"])
    for fmt, default in (("onnx", run / "model.onnx"), ("torchscript", run / "model.torchscript.pt")):
        for _ in range(2):  # the default output, over its own previous export
            assert main(["export", str(run), "--format", fmt, "--no-check"]) == 0
        assert is_rnnlab_export(default)
    out = tmp_path / "m.bin"
    for fmt in ("onnx", "torchscript", "onnx"):  # either format over the other's export
        assert main(["export", str(run), "--format", fmt, "--no-check", "--out", str(out)]) == 0
        assert is_rnnlab_export(out)
    assert capsys.readouterr().err == ""
    # A damaged export is not recognised (its metadata comes after the graph): --force is needed.
    out.write_bytes(out.read_bytes()[:200])
    assert not is_rnnlab_export(out)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_out_inside_a_file_is_named(untrained_run, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture) -> None:
    run, file = untrained_run(["model.hidden=8"]), tmp_path / "notrun" / "file.txt"
    file.parent.mkdir()
    file.write_text("keep me\n")
    for out in (file / "m.onnx", file / "deeper" / "m.onnx"):
        assert main(["export", str(run), "--format", fmt, "--no-check", "--force", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rnnlab: error: --out {out} is inside a file ({file}); give a folder")
        assert err.count("\n") == 1
    assert file.read_text() == "keep me\n" and [p.name for p in file.parent.iterdir()] == ["file.txt"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_read_only_folder_is_one_line(untrained_run, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    """A folder the user may not write into: found by the check before any work (a file made there;
    for a folder still to be made, the nearest one's permissions), or only at save time (the folder
    changed since): one line naming --out either way. The refusal is the OS's EACCES, simulated, so
    that the test also runs as root (which writes into read-only folders all the same)."""
    import errno

    import rnnlab.export as export

    run, folder = untrained_run(["model.hidden=8"]), tmp_path / "ro"
    folder.mkdir()
    real_open, real_access, real_replace = os.open, os.access, os.replace

    def inside(path: object) -> bool:
        return folder == Path(path) or folder in Path(path).parents

    def denied(path: object) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def open_or_deny(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise denied(path)
        return real_open(path, flags, *args, **kwargs)

    def access_or_deny(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and inside(path) else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_or_deny)
    monkeypatch.setattr(os, "access", access_or_deny)
    for out, reason in ((folder / "m.x", "Permission denied"), (folder / "sub" / "m.x", f"{folder} is not writable")):
        assert main(["export", str(run), "--format", fmt, "--no-check", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"rnnlab: error: cannot write {out}: {reason}; choose another --out\n"
    # At save time: the check found the folder writable, then the rename into it was refused.
    monkeypatch.setattr(export, "out_refusal", lambda *args, **kwargs: None)

    def replace_or_deny(src, dst, *args, **kwargs):
        if inside(dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_or_deny)
    out = folder / "m.x"
    assert main(["export", str(run), "--format", fmt, "--no-check", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"rnnlab: error: cannot write {out}: Permission denied; choose another --out\n"
    assert list(folder.iterdir()) == []  # no temporary file left


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("checked_first", [True, False])
def test_an_unwritable_destination_is_one_line(untrained_run, fmt: str, checked_first: bool,
                                               monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    import rnnlab.export as export

    run, out = untrained_run(["model.hidden=8"]), Path("/proc") / f"m{export.EXTENSIONS[fmt]}"
    if not checked_first:  # the failure at save time (the folder changed after the check) reads the same
        monkeypatch.setattr(export, "out_refusal", lambda *args, **kwargs: None)
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 2
    err = capfd.readouterr().err  # fd 2 too: no traceback, no torch logging, no temporary file named
    assert err == f"rnnlab: error: cannot write {out}: No such file or directory; choose another --out\n"


def test_torchscripts_file_errors_name_the_users_path(untrained_run, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    def failing_save(module, path, _extra_files=None):  # what the C++ writer raises, for a full disk say
        raise RuntimeError(f"[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           f"No space left on device, file path: {path}")

    run, out = untrained_run(["model.hidden=8"]), tmp_path / "m.pt"
    monkeypatch.setattr(torch.jit, "save", failing_save)
    assert main(["export", str(run), "--format", "torchscript", "--no-check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"rnnlab: error: cannot write {out}: No space left on device; choose another --out\n"
    assert [p.name for p in tmp_path.iterdir()] == [run.name]  # no temporary file left


def test_only_the_known_cpp_notes_are_held_back(capfd: pytest.CaptureFixture[str]) -> None:
    import threading

    from rnnlab.export_formats import _BENIGN_CPP_WARNINGS, _without_cpp_lines

    # Two exports at once in two threads: the second waits, so neither restores the other's file.
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with _without_cpp_lines(_BENIGN_CPP_WARNINGS):
            inside.set()
            release.wait(5)

    def second() -> None:
        with _without_cpp_lines(_BENIGN_CPP_WARNINGS):
            entered.set()

    entered = threading.Event()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    inside.wait(5)
    threads[1].start()
    assert not entered.wait(0.2)  # the second waits for the first
    release.set()
    for thread in threads:
        thread.join(5)
    assert entered.is_set()
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"

    with _without_cpp_lines(_BENIGN_CPP_WARNINGS):
        os.write(2, b"[W shape_type_inference.cpp:1994] Warning: The shape inference of prim::PackPadded type is "
                    b"missing, so ...\nsomething else went wrong\n")
    assert capfd.readouterr().err == "something else went wrong\n"


def test_torchscripts_bare_cannot_be_opened_gets_the_reason_from_the_os(tmp_path: Path) -> None:
    """torch 2.4's jit.save says only "File X cannot be opened." (2.13 adds strerror): the reason
    is asked of the OS with the same open, and a probe file it had to make is removed again."""
    from rnnlab.export_formats import _save_error

    missing = tmp_path / "no-such-folder" / "m.pt"
    error = _save_error(RuntimeError(f"File {missing} cannot be opened."), missing)
    assert isinstance(error, FileNotFoundError) and error.filename == str(missing)
    # The OS can open it after all (a transient failure): the generic reason, and no file left behind.
    openable = tmp_path / "m.pt"
    error = _save_error(RuntimeError(f"File {openable} cannot be opened."), openable)
    assert isinstance(error, OSError) and "cannot be opened" in error.strerror and not openable.exists()


@pytest.mark.parametrize(("fmt", "name", "instead", "other"), [
    ("torchscript", "model.onnx", "model.torchscript.pt", "onnx"),
    ("onnx", "model.pt", "model.onnx", "torchscript"),
    ("onnx", "model.torchscript.pt", "model.onnx", "torchscript"),
    ("onnx", "M.PTH", "M.onnx", "torchscript"),
])
def test_an_out_named_for_the_other_format_is_refused(untrained_run, tmp_path: Path, fmt: str, name: str,
                                                      instead: str, other: str, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.export as export

    def no_work(*args: object) -> None:
        raise AssertionError("the name must be refused before the export is written")

    run, out = untrained_run(["model.hidden=8"]), tmp_path / name
    monkeypatch.setattr(export, "write_onnx", no_work)
    monkeypatch.setattr(export, "write_torchscript", no_work)
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 2
    suffix = Path(name).suffix
    assert capsys.readouterr().err == (f"rnnlab: error: --out {out} ends in {suffix}, but --format {fmt} writes "
                                       f"{'ONNX' if fmt == 'onnx' else 'TorchScript'}: use {tmp_path / instead}, "
                                       f"or --format {other}\n")
    assert list(tmp_path.iterdir()) == [run]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_out_named_for_its_own_format_or_neither_is_written(untrained_run, tmp_path: Path, fmt: str) -> None:
    run = untrained_run(["model.hidden=8"])
    own = ["m.onnx"] if fmt == "onnx" else ["m.pt", "m.pth", "m.torchscript.pt"]
    for name in (*own, "m.bin", "m"):
        report = export_run(run, fmt, tmp_path / name, check=False)
        assert report.path == str(tmp_path / name) and load_exported(report.path, fmt)(
            np.zeros((1, 28, 28), np.float32)).shape == (1, 10)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_runner_refuses_an_empty_batch(untrained_run, fmt: str) -> None:
    """onnxruntime aborts the process on N = 0 (no exception: this test would crash), so the runner
    refuses it before the runtime sees it; TorchScript gets the same one line."""
    run = untrained_run(["model.hidden=8", "model.cell=gru"])
    runner = load_exported(export_run(run, fmt, check=False).path, fmt)
    with pytest.raises(ExportError, match=r"^an exported model cannot run an empty batch: sequences has shape "
                                          r"\(0, 28, 28\); give at least one sequence \(N >= 1\)$"):
        runner(np.zeros((0, 28, 28), np.float32))
    assert runner(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)


def test_export_takes_a_run_and_leaves_the_callers_random_state_alone(trained_run: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    report = export_run(rnnlab.read_run(trained_run), "torchscript", tmp_path / "m.pt", samples=16)
    assert report.path == str(tmp_path / "m.pt") and report.max_abs_diff <= 1e-4
    assert torch.equal(torch.get_rng_state(), state)


def test_export_arguments_of_the_wrong_type_are_refused(trained_run: Path, tmp_path: Path) -> None:
    from rnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^run_dir must be a folder path \(str or Path\), not an int; "
                                          r"e\.g\. export_run\('runs/my-run', 'onnx'\)$"):
        export_run(5)
    for kwargs, message in [({"out": 5}, r"^out must be a file path \(str or Path\) or None .*, not an int$"),
                            ({"samples": "5"}, r"^samples must be a whole number .*, not a str; e\.g\. samples=256$"),
                            ({"samples": True}, "not a bool"), ({"samples": 0}, "samples=0 must be >= 1"),
                            ({"data_dir": 3}, r"^data_dir must be a path .*, not an int$")]:
        with pytest.raises(ExportError, match=message):
            export_run(trained_run, "torchscript", **{"out": tmp_path / "m.pt", **kwargs})
    assert list(tmp_path.iterdir()) == []
    report = export_run(trained_run, "torchscript", str(tmp_path / "m.pt"), samples=np.int64(8))
    assert report.samples == 8


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An LSTM on rows (T dynamic) and an RNN with readout=all (T fixed at 28), in both formats."""
    from _fixtures_runs import save_untrained_run

    root = tmp_path_factory.mktemp("exports")
    files = {}
    for case, overrides in (("lstm", ["model.cell=lstm"]), ("all", ["model.cell=rnn", "model.readout=all"])):
        run = save_untrained_run(root / case, ["model.hidden=8", *overrides])
        for fmt in ("onnx", "torchscript"):
            files[f"{case}-{fmt}"] = Path(export_run(run, fmt, check=False).path)
    return files


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_load_exported_refuses_what_is_no_export(exports: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    (tmp_path / "notes.txt").write_text("not a model\n")
    other = "torchscript" if fmt == "onnx" else "onnx"
    name = {"onnx": "ONNX", "torchscript": "TorchScript"}[fmt]
    for path, message in [
            (tmp_path / "missing.onnx", rf"^{tmp_path / 'missing.onnx'}: no such file; write one with: rnnlab export "
                                        rf"RUN_DIR --format {fmt} --out {tmp_path / 'missing'}"
                                        rf"{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}$"),  # export's own rule
            (tmp_path, rf"^{tmp_path} is a directory, not an exported model; give the file, such as {tmp_path}/model"),
            (tmp_path / "notes.txt", rf"^{tmp_path / 'notes.txt'} is not a model {name} can load \(.+\); "
                                     "give a file that `rnnlab export` wrote$"),
            (exports[f"lstm-{other}"], rf"is not a model {name} can load \(.+\); .*: pass fmt='{other}'$")]:
        with pytest.raises(ExportError, match=message):
            load_exported(path, fmt)
    with pytest.raises(ExportError, match=r"^unknown export format 'tf'; choose one of: onnx, torchscript"):
        load_exported(exports[f"lstm-{fmt}"], "tf")
    with pytest.raises(ExportError, match=r"^path must be an exported model's file path \(str or Path\), not None"):
        load_exported(None, fmt)
    someone_elses = _victims(tmp_path / "victims")[f"other.{'onnx' if fmt == 'onnx' else 'pt'}"]
    with pytest.raises(ExportError, match=rf"is an? {name} model, but not one rnnlab exported \(it has no rnnlab "
                                          r"metadata\); load_exported runs the files `rnnlab export` writes$"):
        load_exported(someone_elses, fmt)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_runner_converts_what_is_unambiguous(exports: dict[str, Path], fmt: str) -> None:
    runner = load_exported(exports[f"lstm-{fmt}"], fmt)
    x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    expected = runner(x)
    assert expected.shape == (3, 10) and expected.dtype == np.float32
    reversed_view = np.flip(np.flip(x, 1).copy(), 1)  # x's values, with a negative stride torch cannot take
    for given in (x.astype(np.float64), x.tolist(), torch.from_numpy(x), torch.from_numpy(x).requires_grad_(),
                  np.asfortranarray(x), reversed_view):
        np.testing.assert_array_equal(runner(given), expected)
    bf16 = torch.from_numpy(x).bfloat16()
    np.testing.assert_array_equal(runner(bf16), runner(bf16.float().numpy()))
    readonly = x.copy()
    readonly.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns about a read-only array
        np.testing.assert_array_equal(runner(readonly), expected)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_runner_refuses_inputs_of_another_type_or_shape(exports: dict[str, Path], fmt: str) -> None:
    runner, fixed = load_exported(exports[f"lstm-{fmt}"], fmt), load_exported(exports[f"all-{fmt}"], fmt)
    x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    shape = r"sequences must have shape \(N, T, 28\), T steps \(28 in training\); got "
    for given, message in [
            ((x * 255).astype(np.uint8), r"^sequences must be floats \(float32 in \[0, 1\]\), not uint8; pass "
                                         r"x\.astype\(np\.float32\) / 255 for pixels 0-255$"),
            (x[0], shape + r"\(28, 28\); for one sequence add the batch dimension: x\[None\]$"),
            (x[..., :27], shape + r"\(3, 28, 27\)$"), (x.reshape(3, 784), shape + r"\(3, 784\)$"),
            (x[:, :0], shape + r"\(3, 0, 28\)$"),
            (np.full((1, 28, 28), "0.5"), "^sequences must hold numbers, not an array of strings$"),
            (None, "^sequences must hold numbers, not None$"),
            ([x[0], x[1, :5]], "^sequences must be one array of numbers: "),
            ([], r"^an exported model cannot run an empty batch: sequences has shape \(0,\)"),
            (x * 255, r"^sequences must be pixels in \[0, 1\] \(pixel / 255\), as the model was trained on; got "
                      r"values from [0-9.e-]+ to 25[0-9.]+; pass x / 255 for pixels 0-255$"),
            (x - 0.5, r"^sequences must be pixels in \[0, 1\] .*got values from -0\.[0-9]+ to 0\.[0-9]+;"),
            (np.where(x > 0.99, np.nan, x), r"^sequences hold [1-9][0-9]* NaN or infinite values; give finite values$"),
            # finite float64 that float32 cannot hold: before, numpy's overflow warning and "NaN or infinite"
            (np.where(x > 0.99, 1e39, x.astype(np.float64)), r"^sequences hold [1-9][0-9]* values beyond float32's "
                                                             r"range \(±3\.4e\+38, up to 1e\+39\), which the exported "
                                                             r"model computes in; scale them")]:
        with pytest.raises(ExportError, match=message), warnings.catch_warnings():
            warnings.simplefilter("error")  # one error that says it, no RuntimeWarning from numpy beside it
            runner(given)
    with pytest.raises(ExportError, match=r"^this model takes no lengths \(its run was trained on sequences of one "
                                          r"length\); call it with the sequences alone$"):
        runner(x, np.full(3, 28))
    assert fixed(x).shape == (3, 10)  # readout=all fixes T at the trained 28
    with pytest.raises(ExportError, match=r"^sequences must have shape \(N, 28, 28\); got \(3, 14, 28\)$"):
        fixed(x[:, :14])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_runner_of_varying_lengths_needs_them(tmp_path: Path, fmt: str) -> None:
    from test_sequence_files import varying

    (x, y, lengths), (xt, yt, lt) = varying(40, 0), varying(20, 1)
    np.savez(tmp_path / "v.npz", x_train=x, y_train=y, lengths_train=lengths, x_test=xt, y_test=yt, lengths_test=lt)
    assert main(["train", "--data-file", str(tmp_path / "v.npz"), "--model", "gru", "--hidden", "8", "--iterations",
                 "2", "data.val_size=0", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    runner = load_exported(export_run(tmp_path / "run", fmt, check=False).path, fmt)
    sequences, own = xt[:4, :, None], lt[:4]  # (4, 16, 1) padded, (4,) int64
    expected = runner(sequences, own)
    for given in (own.astype(np.int32), own.astype(np.uint8), own.tolist(), torch.from_numpy(own)):
        np.testing.assert_array_equal(runner(sequences, given), expected)
    # float64 (4, 16, 1): 1e39 in the padding
    huge = np.where(np.arange(16)[None, :, None] >= own[:, None, None], 1e39, sequences.astype(np.float64))
    np.testing.assert_array_equal(runner(huge, own), expected)  # in the padding: never read
    huge[1, 0, 0] = -1e39
    with pytest.raises(ExportError, match=r"^sequences hold 1 values beyond float32's range \(±3\.4e\+38, up to "
                                          r"1e\+39\)"):
        runner(huge, own)
    with pytest.raises(ExportError, match=r"^this model was exported from a run on sequences of varying length and "
                                          r"needs their lengths too: call it as run\(sequences, lengths\), lengths "
                                          r"int64 of shape \(N,\) = \(4,\), each sequence's own length from 1 to "
                                          r"T = 16$"):
        runner(sequences)
    with pytest.raises(ExportError, match=r"^lengths must be integers \(int64\), not float64; "
                                          r"pass lengths\.astype\(np\.int64\)$"):
        runner(sequences, own.astype(np.float64))
    with pytest.raises(ExportError, match=r"^lengths must have shape \(N,\) = \(4,\), one per sequence; got \(4, 1\)$"):
        runner(sequences, own[:, None])
    with pytest.raises(ExportError, match=r"^sequences must have shape \(N, T, 1\), T steps \(16 in training\); got "
                                          r"\(4, 16\); add the feature dimension: x\[\.\.\., None\]$"):
        runner(xt[:4], own)
    if fmt == "onnx":  # the graph would spread one length over the batch; TorchScript's own check says so
        with pytest.raises(ExportError, match=r"^lengths must have shape \(N,\) = \(4,\), one per sequence; "
                                              r"got \(1,\)$"):
            runner(sequences, own[:1])


def test_the_format_goes_by_the_extension_in_any_case(exports: dict[str, Path], tmp_path: Path) -> None:
    shouted = tmp_path / "M.ONNX"  # export accepts --out m.ONNX for ONNX; so must load_exported
    shutil.copyfile(exports["lstm-onnx"], shouted)
    x = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(load_exported(shouted)(x), load_exported(exports["lstm-onnx"])(x))
