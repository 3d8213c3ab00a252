"""coop-eval on a color bundle: the held-out split is the training dataset's test split (a class-folder tree's
sibling ROOT/test here, written by the test as 32×32 RGB PNGs), the feature classifier is trained on its train
split with the folders' labels, every synthesis metric (classifier IS included) is reported for drafts and
revised, the sample grid is in color, and Inception FD draws more samples than --n when its N is larger."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from coopnets.evaluation.cli import main
from PIL import Image

CLASSES = ("blue", "green", "red")  # each class a flat color plus noise: a classifier separates them at once


def write_tree(root, per_class: dict[str, int], seed: int = 0):
    """root/<split>/<class>/<i>.png, 32×32 RGB: each class its own dominant channel plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((32, 32, 3), 40.0)
                base[..., 2 - c] = 200.0  # blue, green, red in sorted order
                pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("tree"), {"train": 8, "test": 5})


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("coop-eval: error: ") and "Traceback" not in err
    return err


def _argv(bundle, out, cache, *extra):
    return [str(bundle), "--out", str(out), "--cache-dir", str(cache), "--n", "12", "--no-completion",
            "--ood-n", "0", "--classifier-epochs", "3", "--batch", "8", "--no-progress", *extra]  # fmt: skip


def test_color_eval_uses_the_folder_trees_test_split_and_its_labels(rgb_bundle, tree, tmp_path, capsys):
    out, cache = tmp_path / "eval", tmp_path / "cache"
    assert main(_argv(rgb_bundle, out, cache, "--dataset", f"folder:{tree / 'train'}")) == 0
    report = json.loads((out / "report.json").read_text())
    data = report["header"]["data"]
    assert "3 classes" in data and "its test split (15 images)" in data and "train split (24 images)" in data
    assert "not comparable with published IS" in report["header"]["inception score"]
    rows = {r["name"]: r for r in report["synthesis"]}
    assert list(rows) == ["real (train) vs held-out: floor", "drafts g(X)", "revised (4 steps)"]
    for r in rows.values():
        assert r["n"] == 12 and len(r["class_histogram"]) == 3
        assert all(math.isfinite(r[k]) for k in ("frechet", "kid", "class_kl", "nn_median"))
        # the IS formula lies in [1, K] for any probabilities (K = 3 classes); std over 10 parts is ≥ 0
        assert 1 <= r["classifier_is"] <= 3 and r["classifier_is_std"] >= 0
    # the classifier learnt the folders' labels: it scores the held-out split far above chance (1/3), and the
    # floor (real training images) are spread over all three classes as the tree is
    meta = json.loads(next(cache.glob("classifier-*.json")).read_text())
    assert meta["test_accuracy"] > 0.9 and meta["train_images"] == 24
    assert rows["real (train) vs held-out: floor"]["min_class_share"] > 0
    assert "classifier IS ↑" in (out / "report.md").read_text()
    # the sample grid is RGB with colors in it (a grey grid has R = G = B everywhere)
    with Image.open(out / "samples.png") as img:
        assert img.mode == "RGB"
        pixels = np.asarray(img).astype(int)
    assert (np.abs(pixels[..., 0] - pixels[..., 1]) > 8).mean() > 0.05


def test_the_bundles_own_dataset_is_the_default_and_heldout_overrides_it(rgb_bundle, tree, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(rgb_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["training"] = {"dataset": f"folder:{tree / 'train'}"}  # as coop-train's export writes it
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out, cache = tmp_path / "eval", tmp_path / "cache"
    assert main(_argv(bundle, out, cache)) == 0
    assert "its test split (15 images)" in json.loads((out / "report.json").read_text())["header"]["data"]

    other = write_tree(tmp_path / "other", {"held": 4}, seed=1) / "held"
    assert main(_argv(bundle, out, cache, "--heldout", f"folder:{other}")) == 0
    data = json.loads((out / "report.json").read_text())["header"]["data"]
    assert f"--heldout folder:{other} (12 images)" in data


def test_color_eval_errors_are_one_line(rgb_bundle, tree, tmp_path, capsys):
    argv = _argv(rgb_bundle, tmp_path / "o", tmp_path / "c")
    lone = write_tree(tmp_path / "lone", {"train": 2})  # no sibling test/
    assert main([*argv, "--dataset", f"folder:{lone / 'train'}"]) == 2
    assert "--heldout folder:PATH" in _one_line_error(capsys)
    assert main([*argv, "--dataset", "digits"]) == 2  # no labelled test split
    assert "--no-synthesis" in _one_line_error(capsys)
    flat = tmp_path / "flat" / "test"
    flat.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    assert main([*argv, "--dataset", f"folder:{tree / 'train'}", "--heldout", f"folder:{flat}"]) == 2
    assert "class folders" in _one_line_error(capsys)
    renamed = write_tree(tmp_path / "renamed", {"test": 1})
    (renamed / "test" / "red").rename(renamed / "test" / "crimson")
    dataset = ["--dataset", f"folder:{tree / 'train'}"]
    assert main([*argv, *dataset, "--heldout", f"folder:{renamed / 'test'}"]) == 2
    assert "differ from the training split's" in _one_line_error(capsys)


def test_inception_fd_at_its_own_n_against_the_test_split(rgb_bundle, tree, tmp_path, monkeypatch):
    """--inception-n above --n: the sets are drawn to N = 15 (the whole test split, which is the reference,
    in its order); the classifier's metrics keep N = 12. Inception itself is replaced by a cheap feature map
    (its plumbing is what is tested here; evaluation/inception.py's chunk cache has its own tests)."""
    from coopnets.evaluation import inception

    seen = {}

    def features(images, batch=50, progress=True, desc="", device="cpu", cache=None):
        seen[desc] = images.copy()
        return images.reshape(len(images), 3, -1).mean(2) + 0.01 * images.reshape(len(images), -1)[:, :5:2]

    monkeypatch.setattr(inception, "unavailable_reason", lambda: None)
    monkeypatch.setattr(inception, "inception_features", features)
    out = tmp_path / "eval"
    argv = _argv(rgb_bundle, out, tmp_path / "cache", "--dataset", f"folder:{tree / 'train'}", "--inception",
                 "--inception-n", "40")  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert "N = 15" in report["header"]["inception"]
    assert {len(x) for x in seen.values()} == {15}
    from coopnets.evaluation.data import labelled_splits

    _, test, _ = labelled_splits(f"folder:{tree / 'train'}", (3, 32, 32))
    np.testing.assert_array_equal(seen["held-out"], test.images)  # all of it, in its order
    for r in report["synthesis"]:
        assert r["n"] == 12 and math.isfinite(r["inception_frechet"])
