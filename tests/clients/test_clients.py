"""coop-client and coop-complete against the session's real server, and coop-complete --bundle locally."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coopnets.clients.cli import client_main, complete_main
from coopnets.contract.codec import encode_png
from PIL import Image as PILImage


@pytest.fixture()
def inputs(tmp_path, coop_server, client):
    """Two 28x28 grey PNGs (generator drafts) to complete."""
    images = client.synthesize(count=2, seed=30, steps=0).images
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"item{i}.png"
        path.write_bytes(encode_png(image))
        paths.append(str(path))
    return paths


def _pixels(path) -> np.ndarray:
    return np.asarray(PILImage.open(path))


def test_synth_writes_a_grid_and_single_pngs(coop_server, client, token_file, tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        client_main(
            [
                "synth",
                "--server",
                coop_server.address,
                "--token-file",
                token_file,
                "--count",
                "4",
                "--seed",
                "3",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png",
        "seed_3.png",
        "seed_4.png",
        "seed_5.png",
        "seed_6.png",
    ]
    side = 5 * (2 + 2 * 30)  # 2x2 tiles of 28 + 2 pixels padding, enlarged 5x to reach 256 pixels a side
    assert _pixels(out / "grid.png").shape == (side, side)
    png = client.synthesize(count=1, seed=4, steps=2, png=True).images[0]
    assert np.array_equal(_pixels(out / "seed_4.png"), np.rint((png[0] + 1) * 127.5).astype(np.uint8))
    assert "wrote" in capsys.readouterr().out


def test_info_prints_model_info_as_json(coop_server, token_file, capsys):
    assert client_main(["info", "--server", coop_server.address, "--token-file", token_file]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["imageShape"] == [1, 28, 28] and info["device"] == "cpu"


def test_energy_command(coop_server, token_file, inputs, capsys):
    assert client_main(["energy", "--server", coop_server.address, "--token-file", token_file, *inputs]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("path\tenergy") and lines[1].startswith(inputs[0])
    assert "no out-of-distribution score" in lines[0]  # the session's bundle was exported without one


def test_complete_through_the_server_and_locally_agree(
    coop_server, serving_bundle, token_file, inputs, tmp_path
):
    remote, local = tmp_path / "remote", tmp_path / "local"
    common = [*inputs, "--occlude", "center:14", "--seed", "5", "--out"]
    assert (
        complete_main([*common, str(remote), "--server", coop_server.address, "--token-file", token_file])
        == 0
    )
    assert complete_main([*common, str(local), "--bundle", str(serving_bundle), "--device", "cpu"]) == 0
    for path in inputs:
        stem = path.rsplit("/", 1)[1][:-4]
        rec = _pixels(remote / f"{stem}_recovered.png")
        original = _pixels(path)
        assert rec.shape == (28, 28)
        assert np.array_equal(rec[:7], original[:7])  # observed rows unchanged
        assert np.array_equal(rec, _pixels(local / f"{stem}_recovered.png"))
        strip = _pixels(remote / f"{stem}_strip.png")
        k = 4  # 28-pixel images are shown 4x (nearest neighbour) in strips
        assert strip.shape == (28 * k, 3 * 28 * k + 2 * 8)  # original | occluded | recovered
        assert np.array_equal(strip[::k, : 28 * k : k], original)
        hole = strip[7 * k : 21 * k, (28 + 7) * k + 8 : (28 + 21) * k + 8]
        assert (hole == 0).all()  # the hole, shown black


def test_complete_residual_interpolant_travels_to_the_server_and_the_local_engine(
    coop_server, serving_bundle, token_file, inputs, tmp_path
):
    """--residual-interpolant reaches both paths alike, and on a random-pixel mask the choice shows."""
    rec = {}
    for interpolant in ("harmonic", "biharmonic"):
        for where in ("server", "bundle"):
            out = tmp_path / f"{interpolant}-{where}"
            target = (
                ["--server", coop_server.address, "--token-file", token_file]
                if where == "server"
                else ["--bundle", str(serving_bundle), "--device", "cpu"]
            )
            argv = [inputs[0], "--occlude", "random:0.5", "--residual-interpolant", interpolant, "--out"]
            assert complete_main([*argv, str(out), *target]) == 0
            rec[interpolant, where] = _pixels(out / "item0_recovered.png")
        assert np.array_equal(rec[interpolant, "server"], rec[interpolant, "bundle"])
    assert not np.array_equal(rec["harmonic", "server"], rec["biharmonic", "server"])


def test_complete_with_a_mask_png(coop_server, token_file, inputs, tmp_path):
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 14:] = 255  # white = missing
    PILImage.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert (
        complete_main(
            [
                inputs[0],
                "--mask",
                str(tmp_path / "mask.png"),
                "--server",
                coop_server.address,
                "--token-file",
                token_file,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rec, original = _pixels(out / "item0_recovered.png"), _pixels(inputs[0])
    assert np.array_equal(rec[:, :14], original[:, :14]) and not np.array_equal(rec[:, 14:], original[:, 14:])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.png", "--occlude", "center:14", "--bundle", "B", "--out", "O"], "does not exist"),
        (["IN", "--occlude", "middle:3", "--bundle", "B", "--out", "O"], "unknown occlusion"),
        (["IN", "--occlude", "center:14", "--bundle", "/nonexistent", "--out", "O"], "not a model bundle"),
        (["IN", "--occlude", "center:14", "--server", "SERVER", "--out", "O"], "UNAUTHENTICATED"),
        (
            ["IN", "--occlude", "center:99", "--server", "SERVER", "--token-file", "TOKEN", "--out", "O"],
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_complete_errors_are_one_line(
    coop_server, serving_bundle, token_file, inputs, tmp_path, capsys, argv, message
):
    subs = {
        "B": str(serving_bundle),
        "O": str(tmp_path / "o"),
        "IN": inputs[0],
        "SERVER": coop_server.address,
        "TOKEN": token_file,
    }
    assert complete_main([subs.get(a, a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coop-complete: ") and message in err[0], err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["IN", "--mask", "IN", "--occlude", "center:14", "--bundle", "B", "--out", "O"],
            "exactly one of --mask",
        ),
        (["IN", "--occlude", "center:14", "--out", "O"], "exactly one of --server"),
        (["IN", "--occlude", "center:14", "--bundle", "B", "--server", "S", "--out", "O"], "exactly one of"),
        (["IN", "--occlude", "center:14", "--bundle", "B"], "--out"),
        (["IN", "--occlude", "center:14", "--bundle", "B", "--out", "O", "--restarts", "0"], "--restarts"),
        (["IN", "--occlude", "center:14", "--server", "S", "--out", "O", "--timeout", "0"], "--timeout"),
        (["IN", "--occlude", "center:14", "--bundle", "B", "--out", "O", "--device", "tpu"], "--device"),
        (
            ["IN", "--occlude", "center:14", "--bundle", "B", "--out", "O", "--residual-interpolant", "x"],
            "--residual-interpolant",
        ),
    ],
)
def test_complete_bad_flags_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        complete_main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info"], "--server"),
        (["health", "--server", "S", "--timeout", "-1"], "--timeout"),
        (["synth", "--server", "S", "--count", "0", "--out", "O"], "--count"),
        (["synth", "--server", "S"], "--out"),
        (["energy", "--server", "S", "--steps", "3", "a.png"], "--steps"),  # synth's flag, not energy's
    ],
)
def test_client_bad_flags_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        client_main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_synth_noise_is_tri_state_and_the_connection_comes_from_toml(
    coop_server, client, token_file, tmp_path
):
    """No flag = the bundle's noise (on for the tiny bundle), --no-noise = off; server and token from a
    TOML file that any command could read."""
    conn = tmp_path / "conn.toml"
    conn.write_text(f'server = "{coop_server.address}"\ntoken_file = "{token_file}"\n')
    common = ["synth", "--config", str(conn), "--count", "1", "--seed", "9", "--steps", "50", "--out"]
    assert client_main([*common, str(tmp_path / "default")]) == 0
    assert client_main([*common, str(tmp_path / "off"), "--no-noise"]) == 0
    for name, noise in (("default", True), ("off", False)):
        png = client.synthesize(count=1, seed=9, steps=50, noise=noise, png=True).images[0]
        expected = np.rint((png[0] + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(_pixels(tmp_path / name / "seed_9.png"), expected), name
    assert not np.array_equal(
        _pixels(tmp_path / "default" / "seed_9.png"), _pixels(tmp_path / "off" / "seed_9.png")
    )


def test_client_error_for_an_unreachable_server(capsys, tmp_path):
    assert client_main(["synth", "--server", "127.0.0.1:1", "--timeout", "2", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coop-client: ") and "is coop-serve running" in err[0]


def test_health_command(coop_server, capsys):
    assert client_main(["health", "--server", coop_server.address, "--wait", "5"]) == 0  # no token needed
    assert capsys.readouterr().out.strip() == "SERVING"
