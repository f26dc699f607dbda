"""Dataset sources: locating, verifying, loading and downloading (against a loopback server)."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.data import downloads, sources
from rnnlab.data.idx import write_idx
from rnnlab.data.sources import DATASETS, DatasetSpec, download, find_file, get_dataset, load_split
from rnnlab.errors import ConfigError, DataError

MNIST = DATASETS["mnist"]
TEST_FILES = MNIST.files["test"]
FAST = {"retries": 3, "backoff": 0.001, "timeout": 5.0}


def write_split(d: Path, n: int = 6, *, labels: np.ndarray | None = None, n_labels: int | None = None,
                images_name: str = "t10k-images-idx3-ubyte", labels_name: str = "t10k-labels-idx1-ubyte",
                ) -> None:
    """A tiny test split: ``n`` 28x28 images and their labels."""
    rng = np.random.default_rng(0)
    write_idx(d / images_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    if labels is None:
        labels = (np.arange(n_labels if n_labels is not None else n) % 10).astype(np.uint8)
    write_idx(d / labels_name, labels)


# ---------------------------------------------------------------------------- loopback mirror


@dataclass
class Mirror:
    """Serves ``/<mode>/<file>`` from the real MNIST folder; modes: good, missing, corrupt, altered, flaky,
    swapped (the labels under the images' name), bomb (a valid header, then megabytes of zeros),
    short (the first request of each file announces its length but closes after half of it) and
    slow (1 kB, then 100 bytes a second)."""

    base: str
    requests: list[str] = field(default_factory=list)

    def url(self, mode: str) -> str:
        return f"{self.base}/{mode}/"


@pytest.fixture
def mirror(mnist_dir: Path) -> Iterator[Mirror]:
    seen_flaky: set[tuple[str, str]] = set()
    lock = threading.Lock()
    state = Mirror(base="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            with lock:
                state.requests.append(self.path)
            _, mode, name = self.path.split("/", 2)
            src = mnist_dir / (name.replace("-images-idx3", "-labels-idx1") if mode == "swapped" else name)
            if mode == "missing" or not src.is_file():
                self.send_error(404)
                return
            body = src.read_bytes()
            if mode in ("corrupt", "altered"):  # a valid gzip of wrong content: only the checksum can tell
                raw = bytearray(gzip.decompress(body))
                raw[-1] ^= 0xFF if mode == "corrupt" else 0x01  # altered: a label 0-9 stays one, another dataset's
                body = gzip.compress(bytes(raw), compresslevel=1)
            if mode == "bomb":  # 8 MB of output for a file of 8 kB
                body = gzip.compress(gzip.decompress(body)[:16] + bytes(8 << 20), compresslevel=1)
            if mode in ("flaky", "short"):
                with lock:
                    first = (mode, name) not in seen_flaky
                    seen_flaky.add((mode, name))
                if first and mode == "flaky":
                    self.send_error(503)
                    return
                if first:  # the whole length announced, half sent, connection closed
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "slow":
                self.wfile.write(body[:1000])
                for start in range(1000, len(body), 100):
                    time.sleep(1.0)
                    try:
                        self.wfile.write(body[start:start + 100])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                return
            try:
                self.wfile.write(body)
            except OSError:  # the client gave up (a download over its size limit): nothing to print
                return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).hexdigest()


def test_download_all_files_and_load(mirror: Mirror, tmp_path: Path) -> None:
    paths = download("mnist", tmp_path, mirrors=[mirror.url("good")], **FAST)
    assert sorted(p.name for p in paths) == sorted(f"{b}.gz" for b in MNIST.sha256)
    for p in paths:
        assert sha(p) == MNIST.sha256[p.name[:-3]]
    assert not list(tmp_path.glob(".*")), "temp files left behind"
    x, y = load_split("mnist", "test", tmp_path)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    # Already present and valid: nothing is fetched again.
    n = len(mirror.requests)
    download("mnist", tmp_path, mirrors=[mirror.url("good")], **FAST)
    assert len(mirror.requests) == n


def test_first_mirror_404_falls_through(mirror: Mirror, tmp_path: Path) -> None:
    download("mnist", tmp_path, mirrors=[mirror.url("missing"), mirror.url("good")], splits=["test"], **FAST)
    for base in TEST_FILES:
        assert sha(tmp_path / f"{base}.gz") == MNIST.sha256[base]
    # A 404 is not retried.
    assert sum(r.startswith("/missing/") for r in mirror.requests) == 2


def test_corrupt_mirror_fails_checksum_then_good_mirror(mirror: Mirror, tmp_path: Path) -> None:
    download("mnist", tmp_path, mirrors=[mirror.url("corrupt"), mirror.url("good")], splits=["test"], **FAST)
    assert sha(tmp_path / "t10k-labels-idx1-ubyte.gz") == MNIST.sha256["t10k-labels-idx1-ubyte"]
    # A checksum failure moves straight on to the next mirror.
    assert sum(r.startswith("/corrupt/") for r in mirror.requests) == 2


def test_transient_failure_is_retried(mirror: Mirror, tmp_path: Path) -> None:
    download("mnist", tmp_path, mirrors=[mirror.url("flaky")], splits=["test"], **FAST)
    assert sorted(mirror.requests) == sorted(f"/flaky/{b}.gz" for b in TEST_FILES for _ in range(2))


def test_a_connection_closed_mid_file_is_retried(mirror: Mirror, tmp_path: Path) -> None:
    download("mnist", tmp_path, mirrors=[mirror.url("short")], splits=["test"], **FAST)
    assert sha(tmp_path / "t10k-images-idx3-ubyte.gz") == MNIST.sha256["t10k-images-idx3-ubyte"]
    assert sorted(mirror.requests) == sorted(f"/short/{b}.gz" for b in TEST_FILES for _ in range(2))
    # Downloaded files are readable by everyone, as any data file (mkstemp would leave them 0600).
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.name == "nt", reason="Windows has no umask-derived permissions")
def test_no_timeout_at_all_is_allowed(mirror: Mirror, tmp_path: Path) -> None:
    old = os.umask(0o077)  # a private umask: the files stay private
    try:
        download("mnist", tmp_path, mirrors=[mirror.url("good")], splits=["test"], retries=1, timeout=None)
    finally:
        os.umask(old)
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").stat().st_mode & 0o777 == 0o600


def test_a_mirror_that_trickles_data_is_given_up(mirror: Mirror, tmp_path: Path) -> None:
    # Each wait for data is short, yet the whole file would take hours: 20 timeouts in all (4 s), then the
    # next mirror. The good mirror gets the same timeout: 0.2 s leaves room for a loaded machine's stalls.
    started = time.monotonic()
    download("mnist", tmp_path, mirrors=[mirror.url("slow"), mirror.url("good")], splits=["test"],
             retries=1, backoff=0.001, timeout=0.2)
    assert time.monotonic() - started < 20  # two files: 8 s on the slow mirror, then the good one
    assert sha(tmp_path / "t10k-labels-idx1-ubyte.gz") == MNIST.sha256["t10k-labels-idx1-ubyte"]
    assert sum(r.startswith("/slow/") for r in mirror.requests) == 2  # one attempt each: a slow mirror stays slow
    assert not list(tmp_path.glob(".*")), "temp files left behind"


def test_all_mirrors_bad_names_every_url(mirror: Mirror, tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    urls = [mirror.url("missing"), mirror.url("corrupt"), dead]
    with pytest.raises(DataError) as exc:
        download("mnist", tmp_path, mirrors=urls, splits=["test"], retries=2, backoff=0.001, timeout=2.0)
    msg = str(exc.value)
    assert msg.startswith("could not download mnist t10k-images-idx3-ubyte: every mirror failed")
    assert f"{mirror.url('missing')}t10k-images-idx3-ubyte.gz (attempt 1): HTTP 404" in msg
    assert f"{mirror.url('corrupt')}t10k-images-idx3-ubyte.gz: checksum mismatch" in msg
    assert f"{dead}t10k-images-idx3-ubyte.gz (attempt 2)" in msg  # connection errors are retried
    assert "point data_dir at" in msg
    assert not any(p.name.startswith("t10k-images") for p in tmp_path.iterdir())


def test_structural_check_without_sums(mirror: Mirror, tmp_path: Path) -> None:
    # "altered" serves well-formed files whose last byte differs from MNIST's: a dataset of its own
    spec = DatasetSpec("nosums", files=MNIST.files, sha256={}, mirrors=(mirror.url("altered"),))
    download(spec, tmp_path / "ok", splits=["test"], **FAST)
    assert load_split(spec, "test", tmp_path / "ok")[0].shape == (10000, 28, 28)
    # MNIST's own files, whose sums are known, are another dataset's: passed over for the next mirror
    spec = DatasetSpec("nosums", files=MNIST.files, sha256={}, mirrors=(mirror.url("good"), mirror.url("altered")))
    download(spec, tmp_path / "not-mnist", splits=["test"], **FAST)
    assert sha(tmp_path / "not-mnist" / "t10k-images-idx3-ubyte.gz") != MNIST.sha256["t10k-images-idx3-ubyte"]
    # A file of the wrong kind (labels under the images' name) is passed over too.
    spec = DatasetSpec("nosums", files=MNIST.files, sha256={}, mirrors=(mirror.url("swapped"),))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: every mirror failed \(.*: it is mnist's test "
                                        r"labels, not a file of nosums\)"):
        download(spec, tmp_path / "bad", splits=["test"], **FAST)
    assert not (tmp_path / "bad" / "t10k-images-idx3-ubyte.gz").exists()


def test_invalid_existing_file_is_replaced(mirror: Mirror, tmp_path: Path) -> None:
    stale = tmp_path / "t10k-labels.idx1-ubyte"  # other name style, and truncated
    stale.write_bytes(b"\x00\x00\x08\x01\x00\x00\x27\x10" + bytes(10))
    download("mnist", tmp_path, mirrors=[mirror.url("good")], splits=["test"], **FAST)
    assert sha(stale) == MNIST.sha256["t10k-labels-idx1-ubyte"]
    assert load_split("mnist", "test", tmp_path)[1].shape == (10000,)


def test_load_split_downloads_into_cache_only_when_asked(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path))
    spec = DatasetSpec("remote", files=MNIST.files, sha256=MNIST.sha256, mirrors=(mirror.url("good"),))
    with pytest.raises(DataError, match=r"remote test split not found locally.*Use the setting data\.download=true "
                       r"\(e\.g\. `rnnlab train data\.download=true`\) to fetch it.*point data_dir") as exc:
        load_split(spec, "test")
    assert "--download" not in str(exc.value)  # no such option: it is the setting data.download
    x, y = load_split(spec, "test", download=True)
    assert x.shape == (10000, 28, 28) and (tmp_path / "remote" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (tmp_path / "remote" / "train-images-idx3-ubyte.gz").exists()  # only the split asked for
    # A damaged file in the cache is fetched again when downloads are on, and refused when they are off
    cached = tmp_path / "remote" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_split(spec, "test")
    assert torch.equal(load_split(spec, "test", download=True)[0], x)
    # never in a folder given by the user, which may hold other files: there the damage is reported
    mine = tmp_path / "mine"
    shutil.copytree(tmp_path / "remote", mine)
    (mine / "t10k-images-idx3-ubyte.gz").write_bytes(cached.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_split(spec, "test", mine, download=True)


# ---------------------------------------------------------------------------- local loading


def test_embedded_default_loads_full_mnist() -> None:
    x, y = load_split()
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64 and int(y.max()) == 9
    xt, yt = load_split("mnist", "test")
    assert xt.shape == (10000, 28, 28) and yt[:3].tolist() == [7, 2, 1]
    emb = sources.embedded_dir()
    assert emb is not None
    for base, digest in MNIST.sha256.items():
        assert sha(find_file(emb, base)) == digest


def test_loads_are_cached_and_return_independent_copies() -> None:
    x1, _ = load_split("mnist", "test")
    before = sources._decode.cache_info().hits
    x1.zero_()
    x2, _ = load_split("mnist", "test")
    assert sources._decode.cache_info().hits == before + 2
    assert int(x2.max()) == 255


@pytest.mark.parametrize("style", ["dash", "dot"])
@pytest.mark.parametrize("gz", [False, True])
def test_both_file_name_styles(mnist_dir: Path, tmp_path: Path, style: str, gz: bool) -> None:
    for base in TEST_FILES:
        name = base if style == "dash" else base.replace("-idx", ".idx")
        data = (mnist_dir / f"{base}.gz").read_bytes()
        (tmp_path / (name + (".gz" if gz else ""))).write_bytes(data if gz else gzip.decompress(data))
    x, y = load_split("mnist", "test", tmp_path)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)


def test_find_file_lists_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        find_file(tmp_path, "t10k-labels-idx1-ubyte")
    msg = str(exc.value)
    for name in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte.gz"):
        assert name in msg
    assert str(tmp_path) in msg and "point data_dir at" in msg
    with pytest.raises(DataError, match=r"data folder .*nope does not exist"):
        find_file(tmp_path / "nope", "x")


def test_data_dir_env_and_explicit_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path / "env", n=4)
    write_split(tmp_path / "explicit", n=7)
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "env"))
    assert load_split("fashion-mnist", "test")[0].shape[0] == 4
    assert load_split("fashion-mnist", "test", tmp_path / "explicit")[0].shape[0] == 7


def test_wrong_checksum_message(tmp_path: Path) -> None:
    write_split(tmp_path)
    with pytest.raises(DataError) as exc:
        load_split("mnist", "test", tmp_path)
    msg = str(exc.value)
    path = tmp_path / "t10k-images-idx3-ubyte"
    assert msg.startswith(f"{path}: checksum mismatch for mnist t10k-images-idx3-ubyte")
    assert f"expected sha256 {MNIST.sha256['t10k-images-idx3-ubyte']}, got {sha(path)}" in msg
    assert "fetch a fresh copy with the setting data.download=true" in msg and "point data_dir at" in msg
    assert "--download" not in msg  # no such option: it is the setting data.download
    # verify=False trusts the files (only structural checks remain).
    assert load_split("mnist", "test", tmp_path, verify=False)[0].shape == (6, 28, 28)


def test_label_out_of_range(tmp_path: Path) -> None:
    write_split(tmp_path, n=3, labels=np.array([1, 10, 2], dtype=np.uint8))
    msg = r"t10k-labels-idx1-ubyte: label 10 is out of range for kmnist.*0\.\.9"
    with pytest.raises(DataError, match=msg):
        load_split("kmnist", "test", tmp_path)


def test_label_count_mismatch(tmp_path: Path) -> None:
    write_split(tmp_path, n=5, n_labels=4)
    with pytest.raises(DataError, match=r"4 labels but t10k-images-idx3-ubyte has 5 images"):
        load_split("kmnist", "test", tmp_path)


def test_images_must_be_3d_uint8(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 784), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    msg = ("not kmnist images: expected uint8 (N, 28, 28), got uint8 (2, 784). "
           "Check the dataset name and that this is the images file")
    with pytest.raises(DataError, match=re.escape(msg)):
        load_split("kmnist", "test", tmp_path)


def test_missing_split_file_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte not found in .*point data_dir at a folder"):
        load_split("kmnist", "test", tmp_path)
    # The folder came from RNNLAB_DATA_DIR: the message names that setting, not --data-dir.
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"not found in .*set RNNLAB_DATA_DIR to a folder that has it "
                                        r"\(or unset it\)\.$"):
        load_split("kmnist", "test")
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"gone does not exist. Create it, or set RNNLAB_DATA_DIR to a folder"):
        load_split("kmnist", "test")
    monkeypatch.delenv("RNNLAB_DATA_DIR")
    # A folder named like the file (an archive unpacked in place) is named as such, not "not found".
    (tmp_path / "t10k-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is a folder, not the IDX file "
                                        r"t10k-labels-idx1-ubyte; put the file itself in "):
        load_split("kmnist", "test", tmp_path)


def test_unknown_names() -> None:
    msg = "unknown dataset 'cifar'; valid names are: mnist, fashion-mnist, kmnist"
    with pytest.raises(ConfigError, match=msg):
        get_dataset("cifar")
    with pytest.raises(ConfigError, match="unknown split 'val' for mnist; valid splits are: train, test"):
        load_split("mnist", "val")


def test_dataset_table() -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist"}
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in MNIST.mirrors
    assert all(spec.mirrors and spec.num_classes == 10 for spec in DATASETS.values())


# ---------------------------------------------------------------------------- user-facing defects


def test_a_known_file_in_the_wrong_place_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    # The test labels saved under the test images' name: say which file it is, not just "checksum".
    labels = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataError) as exc:
        load_split("mnist", "test", tmp_path)
    assert str(exc.value) == (
        f"{tmp_path / 't10k-images-idx3-ubyte.gz'}: the file holds the mnist test labels (t10k-labels-idx1-ubyte), "
        "not the test images (t10k-images-idx3-ubyte). Put the right file there, or point data_dir at a "
        "folder holding a good copy of the IDX files."
    )


def test_mirror_serving_another_known_file_is_named(mirror: Mirror, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        download("mnist", tmp_path, mirrors=[mirror.url("swapped")], splits=["test"], **FAST)
    assert (f"{mirror.url('swapped')}t10k-images-idx3-ubyte.gz: the file holds the mnist test labels "
            "(t10k-labels-idx1-ubyte), not the test images (t10k-images-idx3-ubyte)") in str(exc.value)


def test_mirror_serving_a_decompression_bomb_is_rejected(mirror: Mirror, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        download("mnist", tmp_path, mirrors=[mirror.url("bomb")], splits=["test"], **FAST)
    assert (f"{mirror.url('bomb')}t10k-images-idx3-ubyte.gz: trailing bytes: header says 10000x28x28 = "
            "7840000 bytes of data, the gzip stream decompresses to more") in str(exc.value)


def test_oversized_download_is_cut_off(mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An endless response must not fill the disk: the download stops at the size limit.
    monkeypatch.setattr(downloads, "MAX_IDX_BYTES", 1000)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: response is larger than 1000 bytes"):
        download("mnist", tmp_path, mirrors=[mirror.url("good")], splits=["test"], **FAST)
    assert not list(tmp_path.iterdir()), "partial download left behind"


def test_data_dir_that_is_a_file(mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(DataError) as exc:
        load_split("kmnist", "test", f)
    msg = f"data_dir={str(f)!r} is a file; give a folder that holds the IDX files"
    assert str(exc.value) == msg
    sequences = tmp_path / "mine.npz"  # one's own sequences given as the image folder
    sequences.write_bytes(b"PK")
    with pytest.raises(DataError, match=re.escape(f"; to train on your own sequences, give the file as "
                                                  f"data.file={sequences}") + "$"):
        load_split("mnist", "test", sequences)
    # One of the data files itself: say which folder to give instead.
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes((mnist_dir / images.name).read_bytes())
    with pytest.raises(DataError, match=re.escape(f"(t10k-images-idx3-ubyte.gz is one of them: give its folder, "
                                                  f"{tmp_path})")):
        load_split("mnist", "test", images, download=True)
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(f))
    with pytest.raises(DataError, match=rf"^RNNLAB_DATA_DIR={re.escape(str(f))} is a file; set it to a folder that "
                                        r"holds the IDX files, or unset it$"):
        load_split("kmnist", "test")
    with pytest.raises(DataError, match=r"data folder .*notes\.txt is a file; point data_dir at a folder"):
        find_file(f, "t10k-images-idx3-ubyte")


@pytest.mark.parametrize("download_", [False, True])
def test_cache_dir_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download_: bool) -> None:
    f = tmp_path / "cache"
    f.write_text("x")
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(f))
    with pytest.raises(DataError) as exc:
        load_split("kmnist", "test", download=download_)
    assert str(exc.value) == (
        f"cannot use the download cache {f / 'kmnist'} (from RNNLAB_CACHE_DIR={f}): {f} is a file, not a folder. "
        "Set RNNLAB_CACHE_DIR to a folder you can write (or unset it to use ~/.cache/rnnlab), or point data_dir "
        "at a folder with the IDX files."
    )


def test_download_into_a_data_dir_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"cannot create download folder .*f/sub: .*f is a file, not a folder\. "
                                        r"Give data_dir a folder you can write\."):
        load_split("kmnist", "test", tmp_path / "f" / "sub", download=True)


def test_a_download_killed_outright_leaves_no_lasting_part_file(mirror: Mirror, tmp_path: Path) -> None:
    """SIGKILL skips every cleanup: the next download removes the hidden .part it left, once it is an hour
    old, and keeps a fresh one, which may be another process's download in progress."""
    stale = tmp_path / ".t10k-labels-idx1-ubyte.gz.0a1b2c3d4e5f.part"
    fresh = tmp_path / ".t10k-labels-idx1-ubyte.gz.5f4e3d2c1b0a.part"
    other = tmp_path / ".notes.txt.0a1b2c3d4e5f.part"  # not a download of this file: not ours to judge
    backup = tmp_path / ".t10k-labels-idx1-ubyte.gz.mybackup.part"  # not a name rnnlab makes
    for path in (stale, fresh, other, backup):
        path.write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    for path in (stale, other, backup):
        os.utime(path, (two_hours_ago, two_hours_ago))
    download("mnist", tmp_path, mirrors=[mirror.url("good")], splits=["test"], **FAST)
    assert not stale.exists() and fresh.exists() and other.exists() and backup.exists()
    assert sha(tmp_path / "t10k-labels-idx1-ubyte.gz") == MNIST.sha256["t10k-labels-idx1-ubyte"]


def test_a_tilde_in_the_cache_setting_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.data.sources import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RNNLAB_CACHE_DIR", "~/cache")  # quoted in a shell, so not expanded there
    assert cache_dir("kmnist") == tmp_path / "cache" / "kmnist"  # where downloads write, and reads look


def test_mnists_files_are_refused_as_another_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fashion-MNIST and KMNIST use MNIST's file names, and have no sums here: MNIST's files, whose
    sums are known, are recognised (RNNLAB_DATA_DIR set for MNIST would otherwise train on digits)."""
    from rnnlab.data.sources import embedded_dir, load_split

    monkeypatch.setenv("RNNLAB_DATA_DIR", str(embedded_dir()))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is mnist's test images, not a file of kmnist "
                                        r"\(which uses the same file names\)"):
        load_split("kmnist", "test")
    from rnnlab.data.datasets import get_dataset

    raw = (embedded_dir() / "t10k-images-idx3-ubyte.gz").read_bytes()  # a mirror serving MNIST's under kmnist's name
    why = downloads._verify_bytes(get_dataset("kmnist"), "t10k-images-idx3-ubyte", raw, "kmnist t10k images")
    assert why == "it is mnist's test images, not a file of kmnist"  # so that mirror is passed over


def test_a_download_folder_that_cannot_be_written_is_one_line_with_advice(mirror: Mirror, tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").mkdir()  # a folder in the file's place (as a read-only disk)
    with pytest.raises(DataError, match=r"cannot write .*t10k-images-idx3-ubyte.gz \(.*\): downloads need a folder "
                                        r"they can write; set RNNLAB_CACHE_DIR"):
        download("mnist", tmp_path, mirrors=[mirror.url("good")], splits=["test"], **FAST)
