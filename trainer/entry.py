"""The console scripts of the [train] extra, torch-free until torch is found (contract.flags.extra_main):
a base install answers them with one line saying what to install."""

from __future__ import annotations

from coopnets.contract.flags import extra_main

NEEDS = ("torch", "onnx")
train_main = extra_main("coop-train", "coopnets.trainer.cli:train_main", NEEDS, "train")
export_main = extra_main("coop-export", "coopnets.trainer.cli:export_main", NEEDS, "train")
eval_main = extra_main("coop-eval", "coopnets.evaluation.cli:main", (*NEEDS, "sklearn", "skimage"), "train")
