"""The 64-px scene net end to end on a handful of 64×64 RGB PNGs written here: coop-train (a few iterations,
arch picked from --image-size 64) exports a bundle, which the serving engine opens as 3×64×64 and
synthesizes and completes through. A smoke test: no quality target on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coopnets.trainer.cli import train_main
from PIL import Image


@pytest.mark.slow  # trains, exports and serves the 64 px net: ~12 s
def test_scene64_trains_exports_and_serves_on_a_small_color_folder(tmp_path):
    from coopnets.serving.engine import Engine

    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # sky over ground, each its own colors and horizon
        pixels = np.empty((64, 64, 3), np.uint8)
        horizon = int(rng.integers(20, 44))
        pixels[:horizon] = rng.integers(100, 255, 3)
        pixels[horizon:] = rng.integers(0, 150, 3)
        Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    out = tmp_path / "run"
    argv = ["--dataset", f"folder:{folder}", "--image-size", "64", "--channels", "3", "--out", str(out),
            "--iterations", "2", "--batch-size", "3", "--chains", "3", "--langevin-steps", "2",
            "--log-every", "1", "--sample-every", "2", "--ckpt-every", "2",
            "--bn-recalibrate", "0"]  # fmt: skip
    assert train_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["image_size"], config["channels"]) == ("auto", 64, 3)  # auto: by the size
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2]
    with Image.open(out / "samples" / "iter_000002.png") as img:
        assert img.mode == "RGB"

    engine = Engine.open(out / "bundle", device="cpu", threads=1)
    assert engine.image_shape == (3, 64, 64) and engine.bundle.arch == "scene64"
    result = engine.synthesize([0, 1])
    assert result.images.shape == (2, 3, 64, 64) and np.isfinite(result.images).all()
    assert np.abs(result.images).max() <= 1  # the generator's tanh, and Langevin clipped to the data range
    assert np.isfinite(result.energy).all()
    # a completion keeps the observed pixels exactly (the service's contract), here the top half
    images = result.images[:1]
    masks = np.zeros_like(images)
    masks[..., 32:, :] = 1
    recovered = engine.complete(images, masks, (3,)).images  # (1, 3, 64, 64)
    np.testing.assert_array_equal(recovered[0, :, :32], images[0, :, :32])
    assert np.isfinite(recovered).all()
