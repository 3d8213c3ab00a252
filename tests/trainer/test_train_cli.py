"""coop-train / coop-export: config precedence, one-line errors and exit codes, a dry run, a tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from coopnets.contract.bundle import DEFAULT_COMPLETION
from coopnets.trainer.cli import export_main, train_main
from coopnets.trainer.config import TrainConfig

TINY = [
    "--batch-size",
    "4",
    "--langevin-steps",
    "2",
    "--log-every",
    "1",
    "--sample-every",
    "2",
    "--ckpt-every",
    "2",
]


@pytest.fixture
def npz(tmp_path) -> Path:
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8))
    return path


def dry_run(capsys, *argv: str) -> dict:
    """The config coop-train resolves for `argv`, as its --dry-run prints it."""
    assert train_main([*argv, "--dataset", "digits", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    return json.loads(printed[: printed.index("dry run ok")])


def test_config_file_then_flags_override_defaults(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("lr_descriptor = 0.002\nlangevin-steps = 7\nlangevin_noise = false\nbatch_size = 16\n")
    out = ["--out", str(tmp_path / "run")]
    cfg = dry_run(capsys, *out, "--config", str(toml), "--langevin_steps", "3")  # the underscore alias too
    assert (cfg["lr_descriptor"], cfg["langevin_steps"], cfg["langevin_noise"], cfg["batch_size"]) == (
        0.002,
        3,
        False,
        16,
    )
    assert dry_run(capsys, *out, "--config", str(toml), "--langevin-noise")["langevin_noise"] is True
    assert dry_run(capsys, *out) == {**TrainConfig().to_dict(), "dataset": "digits", "out": out[1]}
    toml.write_text("lr_descriptr = 0.1\n")
    assert train_main([*out, "--config", str(toml), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lr_descriptr'" in err and err.count("\n") == 1


def test_a_preset_replaces_the_defaults_below_the_file_and_the_flags(tmp_path, capsys):
    from coopnets.trainer.presets import PRESETS

    out = ["--out", str(tmp_path / "run")]
    cfg = dry_run(capsys, *out, "--preset", "paper-mnist")
    assert {k: cfg[k] for k in PRESETS["paper-mnist"].values} == PRESETS["paper-mnist"].values
    assert (cfg["batch_size"], cfg["chains"], cfg["preset"]) == (100, 144, "paper-mnist")
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "port-cifar"\nchains = 64\n')
    cfg = dry_run(capsys, *out, "--config", str(toml), "--batch-size", "8")
    assert (cfg["preset"], cfg["delta"], cfg["langevin_noise"], cfg["chains"], cfg["batch_size"]) == (
        "port-cifar",
        0.001,
        False,
        64,
        8,
    )
    assert train_main(["--preset", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}:" in listed for name in PRESETS) and "--no-langevin-noise" in listed


def test_resume_keeps_the_presets_values(tmp_path, npz, capsys):
    out = tmp_path / "run"
    common = ["--dataset", f"npz:{npz}", "--out", str(out), "--no-export", "--preset", "port-cifar"]
    small = ["--batch-size", "4", "--chains", "4", "--image-size", "28", "--channels", "1"]
    assert train_main([*common, *small, "--iterations", "1", "--langevin-steps", "1"]) == 0
    assert train_main(["--out", str(out), "--resume", "--iterations", "2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["preset"], saved["delta"], saved["langevin_steps"], saved["batch_size"]) == (
        "port-cifar",
        0.001,
        1,
        4,
    )
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
        (["--dataset", "cifar10"], "--dataset: cifar10: needs a path"),
        (["--dataset", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar"),
        (["--data-dir", "/nonexistent/fashion"], "--data-dir: /nonexistent/fashion does not exist"),
        (["--image-size", "30"], "--image-size: 30 is not supported"),
        (["--delta", "-0.002"], "--delta: must be > 0"),
        (["--s", "0"], "--s: must be > 0"),
        (["--arch", "scene64"], "--arch: scene64 makes 64px images"),
        (["--amp", "fp8"], "--amp: unknown autocast mode"),
        (["--batch-size", "x"], "invalid int value"),
        (["--preset", "paper"], "--preset 'paper': unknown; use one of paper-mnist"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, words, capsys, tmp_path):
    try:
        code = train_main([*argv, "--out", str(tmp_path / "run"), "--dry-run"])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("restarts", ["0", "17"])
def test_export_restarts_out_of_range_is_one_line_exit_2(restarts, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "c.pt"), str(tmp_path / "b"), "--restarts", restarts])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--restarts {restarts}: give 1 to 16" in err and err.count("\n") == 1


def test_resume_without_checkpoint_and_bad_checkpoint(tmp_path, capsys):
    assert train_main(["--out", str(tmp_path / "none"), "--resume", "--dataset", "digits"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert export_main([str(tmp_path / "junk.pt"), str(tmp_path / "bundle")]) == 2
    assert "not a readable coopnets checkpoint" in capsys.readouterr().err


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        train_main(
            ["--dataset", "digits", "--out", str(out), "--dry-run", "--image-size", "32", "--channels", "3"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert '"resolved' not in printed and "dry run ok: 1797 images (3, 32, 32), arch cifar32" in printed
    assert not out.exists()


def test_tiny_run_resume_and_outputs(tmp_path, npz, capsys):
    out = tmp_path / "run"
    common = ["--dataset", f"npz:{npz}", "--out", str(out), "--no-export", *TINY]
    assert train_main([*common, "--iterations", "2"]) == 0
    assert train_main([*common, "--iterations", "3"]) == 2  # never overwrites a run without --resume
    assert "already holds a run" in capsys.readouterr().err
    assert train_main([*common, "--iterations", "2", "--resume"]) == 2  # already there
    assert "already at iteration 2" in capsys.readouterr().err
    # resumed with nothing but a file and a flag: the checkpoint's config < the file < the flags
    toml = tmp_path / "more.toml"
    toml.write_text("log_every = 2\nsample_every = 5\n")
    resume = [
        "--out",
        str(out),
        "--resume",
        "--config",
        str(toml),
        "--iterations",
        "3",
        "--sample-every",
        "1",
    ]
    assert train_main(resume) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["iterations"] == 3 and saved["batch_size"] == 4 and saved["dataset"] == f"npz:{npz}"
    assert (saved["log_every"], saved["sample_every"], saved["export"]) == (2, 1, False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3]
    for name in (
        "checkpoint.pt",
        "samples/iter_000002.png",
        "samples/iter_000003.png",
        "samples/final_eval.png",
        "samples/final_train_bn.png",
        "train.log",
    ):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())


def float32_only_bytes(bundle: Path) -> int:
    """Bytes of weights.bin that only typicality.onnx reads (the pack keeps that graph float32)."""
    import onnx

    def spans(graph: str) -> set[tuple[int, int]]:
        model = onnx.load(str(bundle / f"{graph}.onnx"), load_external_data=False)
        out = set()
        for init in model.graph.initializer:
            info = {e.key: e.value for e in init.external_data}
            if "offset" in info:
                out.add((int(info["offset"]), int(info["length"])))
        return out

    others = set().union(*(spans(g) for g in ("generator", "descriptor", "langevin_step", "generator_grad")))
    return sum(length for _, length in spans("typicality") - others)


@pytest.mark.slow  # coop-train in a subprocess, then three exports: ~12 s
def test_train_exports_bundle_and_coop_export_cli(tmp_path, npz):
    pytest.importorskip("coopnets.trainer.export")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from coopnets.trainer.cli import train_main; sys.exit(train_main())",
            "--dataset",
            f"npz:{npz}",
            "--out",
            str(out),
            "--iterations",
            "1",
            *TINY,
            "--langevin-steps",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["langevin"] == {"s": 0.016, "delta": 0.002, "steps": 3, "sigma": 0.3, "noise": True}
    assert manifest["training"]["iterations"] == 1 and manifest["training"]["langevin_steps"] == 3
    assert manifest["source"] == {"checkpoint": "checkpoint.pt", "iteration": 1}
    triton = tmp_path / "triton"  # the repository itself: tests/system/test_triton.py
    assert export_main([str(out / "checkpoint.pt"), str(tmp_path / "again"), "--triton", str(triton)]) == 0
    assert (triton / "synthesis_chain" / "1" / "model.onnx").is_file()
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["files"]["generator.onnx"]["sha256"] == manifest["files"]["generator.onnx"]["sha256"]
    assert again["source"] == manifest["source"] and again["weights"]["storage"] == "float32"
    assert again["completion"]["restarts"] == DEFAULT_COMPLETION.restarts
    # --restarts: the completion chains the bundle's requests get, the other completion defaults kept
    assert export_main([str(out / "checkpoint.pt"), str(tmp_path / "r16"), "--restarts", "16"]) == 0
    r16 = json.loads((tmp_path / "r16" / "manifest.json").read_text())["completion"]
    assert r16 == {**DEFAULT_COMPLETION.to_manifest(), "restarts": 16}
    # --weights int8: the same graphs (the decoders aside), a quarter of the bytes of the weights it
    # re-encodes; typicality.onnx keeps float32 (trainer/pack.py: its calibration used those weights)
    assert export_main([str(out / "checkpoint.pt"), str(tmp_path / "int8"), "--weights", "int8"]) == 0
    int8 = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert int8["weights"]["storage"] == "int8"
    encoded = int8["files"]["weights.bin"]["bytes"] - float32_only_bytes(tmp_path / "int8")
    as_trained = manifest["files"]["weights.bin"]["bytes"] - float32_only_bytes(out / "bundle")
    assert encoded < 0.3 * as_trained, (encoded, as_trained)
