"""coop-eval end to end on tiny data: a tiny Fashion-MNIST-format dataset written here as idx files, the real
tiny bundle of tests/conftest.py (trainer.nets exported by trainer.export.export_bundle), a one-epoch
classifier that a second run takes from its cache; and its one-line failures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from coopnets.evaluation.cli import main
from coopnets.evaluation.completion import METHODS
from support import write_idx

OCCLUSIONS = "center:12,random:0.5,left-half,rects"


def write_tiny_fashion(folder, n_train: int = 200, n_test: int = 60, splits=("train", "t10k")):
    """10 classes, each a smooth random template plus noise, as idx .gz files (the Fashion-MNIST names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (10, 7, 7))
    templates = np.kron(coarse, np.ones((4, 4)))  # (10, 28, 28)
    for split, n in (("train", n_train), ("t10k", n_test)):
        if split not in splits:
            continue
        labels = np.arange(n) % 10
        images = np.clip(templates[labels] + rng.normal(0, 20, (n, 28, 28)), 0, 255)  # (n, 28, 28)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory):
    return write_tiny_fashion(tmp_path_factory.mktemp("fashion"))


@pytest.mark.slow  # the whole coop-eval run (synthesis, completion, ood) on a real bundle: ~16 s
def test_coop_eval_end_to_end(serving_bundle, tiny_fashion, tmp_path, capsys):
    out, cache = tmp_path / "eval", tmp_path / "cache"
    argv = [str(serving_bundle), "--out", str(out), "--data-dir", str(tiny_fashion),
            "--cache-dir", str(cache),
            "--n", "40", "--completion-n", "6", "--classifier-epochs", "2", "--langevin-only-steps", "2",
            "--occlusions", OCCLUSIONS, "--batch", "16", "--examples", "3", "--no-progress",
            "--ood-n", "20"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "feature classifier: test accuracy" in printed and "## Completion" in printed
    assert "## Out-of-distribution" in printed

    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["synthesis"]}
    assert list(rows) == ["real (train) vs held-out: floor", "drafts g(X)", "revised (4 steps)"]
    for r in rows.values():
        assert r["n"] == 40 and all(math.isfinite(r[k]) for k in ("frechet", "kid", "class_kl", "nn_median"))
        # 10 quotients count / 40, each rounded once (≤ 2⁻⁵³ relative), and 9 float64 additions of values ≤ 1:
        # ≤ 10·2⁻⁵³ ≈ 1.1e-15 (JSON keeps floats exactly)
        assert sum(r["class_histogram"]) == pytest.approx(1.0, abs=1e-14)
    # a random tiny generator is far from the data; real training images are not
    assert rows["drafts g(X)"]["frechet"] > rows["real (train) vs held-out: floor"]["frechet"]

    cells = report["completion"]
    expected = [(o, m) for o in OCCLUSIONS.split(",") for m in METHODS]
    assert [(c["occlusion"], c["method"]) for c in cells] == expected
    for c in cells:
        assert c["psnr_missing"]["n"] == 6
        assert c["psnr_missing"]["low"] <= c["psnr_missing"]["mean"] <= c["psnr_missing"]["high"]
        assert c["psnr_whole"]["mean"] >= c["psnr_missing"]["mean"]  # observed pixels are exact
        assert 0 <= c["mae_missing"]["mean"] <= 1
    ood = report["ood"]  # the session's bundle has no typicality graph: the four model scores
    assert {r["score"] for r in ood} == {"E(Y)", "-f(Y)", "latent U", "displacement"}
    assert {r["out_set"] for r in ood} == {"uniform", "gaussian", "constant", "inverted", "blurred", "digits"}
    assert all(r["n_in"] == 20 and r["n_out"] == 20 and 0 <= r["auroc"] <= 1 for r in ood)
    assert {m["occlusion"] for m in report["completion_margins"]} == set(OCCLUSIONS.split(","))
    assert "| coop |" in (out / "report.md").read_text()
    strips = ("center12", "random05", "left-half", "rects")
    for name in ("samples.png", *(f"completion-{s}.png" for s in strips)):
        assert (out / name).stat().st_size > 0

    # the classifier is cached with its checksum, and a second run takes it from there without training: the
    # accuracy it reports is the cache file's, here one that no classifier can score on 60 images
    meta_path = next(cache.glob("classifier-*.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["test_accuracy"] > 0.5
    meta_path.write_text(json.dumps({**meta, "test_accuracy": 0.0123}))
    assert main([*argv[:2], str(tmp_path / "eval2"), *argv[3:], "--no-completion"]) == 0
    assert (
        f"test accuracy 0.0123 on 60 held-out images, sha256 {meta['sha256'][:16]}" in capsys.readouterr().out
    )
    again = json.loads((tmp_path / "eval2" / "report.json").read_text())
    assert again["synthesis"] == report["synthesis"]  # the same weights give the same numbers
    assert again["header"]["classifier"].startswith("test accuracy 0.0123")
    assert len(list(cache.glob("classifier-*.pt"))) == 1


def test_coop_eval_on_another_datasets_held_out_images(serving_bundle, tmp_path, capsys):
    out = tmp_path / "digits"
    argv = [str(serving_bundle), "--out", str(out), "--heldout", "digits", "--heldout-skip", "1700",
            "--no-synthesis", "--completion-n", "5", "--occlusions", "center:12,random:0.3",
            "--methods", "coop,mean,ns", "--ood-n", "10", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["header"]["data"].startswith("digits: images 1700.. held out (97)")
    assert [(c["occlusion"], c["method"]) for c in report["completion"]] == [
        (o, m) for o in ("center:12", "random:0.3") for m in ("coop", "mean", "ns")
    ]
    assert all(c["psnr_missing"]["n"] == 5 for c in report["completion"])
    assert {r["n_in"] for r in report["ood"]} == {10}
    assert main([*argv[:5], "--heldout-skip", "1796", *argv[7:]]) == 2  # one held-out image is too few
    assert "--heldout-skip" in _one_line_error(capsys)


def test_coop_eval_on_a_color_bundle_defaults_to_the_papers_protocol(rgb_bundle, tiny_fashion, tmp_path):
    """No --occlusions on a color model: the paper's squares (scaled to 32 px) and block salt-and-pepper,
    every method with PSNR and MAE; the OOD table has the color out sets, Fashion-MNIST's from --data-dir."""
    from coopnets.contract.occlusions import COLOR_OCCLUSIONS

    out = tmp_path / "color"
    argv = [str(rgb_bundle), "--out", str(out), "--heldout", "digits", "--heldout-skip", "1700",
            "--data-dir", str(tiny_fashion), "--no-synthesis", "--completion-n", "3",
            "--langevin-only-steps", "2", "--ood-n", "6", "--examples", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    cells = report["completion"]
    expected = [(o, m) for o in COLOR_OCCLUSIONS for m in METHODS]
    assert [(c["occlusion"], c["method"]) for c in cells] == expected
    fractions = {c["occlusion"]: c["missing_fraction"] for c in cells}
    # exactly: a float32 count of 0s and 1s (exact below 2²⁴) over 3·3·1024 pixels rounded once, and the
    # quotients 225/1024 and 625/1024 are floats; JSON keeps floats exactly
    assert fractions["m30"] == 15**2 / 32**2  # m30 at 32 px: a 15-px square
    assert fractions["m50"] == 25**2 / 32**2
    assert fractions["blocks"] == 0.5
    assert all(0 < c["mae_missing"]["mean"] < 1 and c["psnr_missing"]["n"] == 3 for c in cells)
    assert {"model_mae", "baseline_mae", "mae_margin"} <= set(report["completion_margins"][0])
    assert [r["out_set"] for r in report["ood"] if r["score"] == "E(Y)"] == [
        "uniform", "gaussian", "constant", "inverted", "blends", "fashion-mnist", "textures"
    ]  # fmt: skip
    for name in ("m30", "m40", "m50", "blocks", "left-half"):
        assert (out / f"completion-{name}.png").stat().st_size > 0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("coop-eval: error: ") and "Traceback" not in err
    return err


def test_missing_dataset_fails_with_one_line(serving_bundle, tmp_path, capsys):
    argv = [str(serving_bundle), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "--data-dir" in _one_line_error(capsys)

    train_only = write_tiny_fashion(tmp_path / "train-only", splits=("train",))
    assert main([*argv, "--data-dir", str(train_only)]) == 2
    assert "t10k-images-idx3-ubyte" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "extra, needle",
    [(["--occlusions", "top-half"], "occlusion"), (["--methods", "coop,magic"], "--methods"),
     (["--n", "0"], "--n"), (["--no-synthesis", "--no-completion", "--ood-n", "0"], "nothing to do"),
     (["--heldout", "digits"], "--no-synthesis"), (["--ood", "npz:/nonexistent.npz"], "--ood")],
)  # fmt: skip
def test_bad_flags_fail_with_one_line(serving_bundle, tmp_path, capsys, extra, needle):
    assert main([str(serving_bundle), "--out", str(tmp_path / "o"), *extra]) == 2
    assert needle in _one_line_error(capsys)


def test_config_file_is_read_and_checked(serving_bundle, tmp_path, capsys):
    config = tmp_path / "eval.toml"
    config.write_text('methods = "coop,magic"\n')
    assert main([str(serving_bundle), "--config", str(config)]) == 2
    assert "--methods: unknown magic" in _one_line_error(capsys)
    config.write_text("n = 0\n")  # a flag given on the command line overrides the file
    assert main([str(serving_bundle), "--config", str(config), "--n", "5"]) == 2
    assert "--n must be at least 10" in _one_line_error(capsys)
    config.write_text("samples = 3\n")
    assert main([str(serving_bundle), "--config", str(config)]) == 2
    assert "unknown key 'samples'" in _one_line_error(capsys)


def test_bad_model_fails_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "no-bundle")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    _one_line_error(capsys)
