"""The contract package on its own: the codec, masks and occlusions, atomic files, the flag builder, and the
sampler's driving (progress order, cancellation, per-image seeds) on the tiny legacy bundle's real graphs."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import float32_bound
import numpy as np
import pytest
from coopnets.contract import codec, files, flags, inpainting, occlusions, sampling
from coopnets.contract.sampling import Cancelled, SynthesisParams
from coopnets.serving.engine import Engine
from coopnets.v1 import coopnets_pb2 as pb
from support import ROOT, completion_params, legacy_nets

LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"
U = float32_bound.U  # float32 unit roundoff, 2⁻²⁴
# Conjugate gradients (inpainting.biharmonic_fill) stop once the residual of the normal equations A·x = b has
# fallen to tol·‖b‖. The checks of the equation it solves run it to CG_TOL with room for CG_ITERATIONS (CG's
# √κ rate reaches 1e-12 within ~3,700 for κ <= 5e4, the largest hole below), so that its error is cg_error's
# bound, not the default stopping point's
CG_TOL, CG_ITERATIONS = 1e-12, 10_000


@pytest.fixture(scope="module")
def engine():
    return Engine.open(LEGACY, device="cpu", threads=1)


# ---- codec -------------------------------------------------------------------------------------------------


def test_pixels_png_and_tensor_messages_round_trip():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 5, 7)).astype(np.float32)  # (C, H, W), not square, not symmetric
    pixels = codec.to_uint8(image)
    assert pixels.dtype == np.uint8 and codec.to_uint8(pixels) is pixels
    assert np.abs(codec.from_uint8(pixels) - image).max() <= float32_bound.PNG_ERROR
    png = codec.decode_png(codec.encode_png(image), (3, 5, 7))
    np.testing.assert_array_equal(png, codec.from_uint8(pixels))
    msg = codec.set_image(pb.Image(), image, png=False)
    np.testing.assert_array_equal(codec.image_from_message(msg, (3, 5, 7)), image)  # exact
    with pytest.raises(codec.FieldError) as e:
        codec.decode_png(codec.encode_png(image), (3, 7, 5), "req.image.png")
    assert e.value.field == "req.image.png" and "7x5" in e.value.description


def test_bad_messages_name_their_field():
    shape = (1, 4, 4)
    cases = {
        "image": pb.Image(),
        "image.tensor.data": pb.Image(tensor=pb.Tensor(shape=[1, 4, 4], data=b"\0" * 10)),
        "image.tensor.shape": pb.Image(tensor=pb.Tensor(shape=[2, 4, 4], data=b"\0" * 128)),
        "image.png": pb.Image(png=b"not a png"),
    }
    for field, msg in cases.items():
        with pytest.raises(codec.FieldError) as e:
            codec.image_from_message(msg, shape, "image")
        assert e.value.field == field
    nan = codec.set_tensor(pb.Tensor(), np.full(shape, np.nan, np.float32))
    with pytest.raises(codec.FieldError, match="finite"):
        codec.image_from_message(pb.Image(tensor=nan), shape)


def test_masks_are_one_where_missing_in_every_form():
    shape = (3, 4, 4)
    hole = np.zeros((4, 4), np.float32)
    hole[1:3, 0] = 1  # (H, W), a hole on the left edge
    from_tensor = codec.mask_from_message(pb.Image(tensor=codec.set_tensor(pb.Tensor(), hole)), shape)
    white = codec.encode_png(hole[None] * 2 - 1)  # white (1 -> 255) = missing
    from_png = codec.mask_from_message(pb.Image(png=white), shape)
    np.testing.assert_array_equal(from_tensor, np.broadcast_to(hole, shape))
    np.testing.assert_array_equal(from_png, from_tensor)
    for bad, words in ((hole * 0.5, r"0 \(observed\) or 1"), (hole * 0, "no missing pixel")):
        with pytest.raises(codec.FieldError, match=words):
            codec.mask_from_message(pb.Image(tensor=codec.set_tensor(pb.Tensor(), bad)), shape)


def test_grids_and_strips_are_enlarged_and_atomic(tmp_path):
    images = np.linspace(-1, 1, 4 * 28 * 28, dtype=np.float32).reshape(4, 1, 28, 28)
    grid = codec.grid(images)
    assert grid.shape == (2 + 2 * 30, 2 + 2 * 30, 1)
    np.testing.assert_array_equal(grid[2:30, 2:30, 0], codec.to_uint8(images[0, 0]))
    path = codec.save_strip([images[0], images[1]], tmp_path / "strip.png")
    from PIL import Image

    k = codec.enlargement(28)
    assert k == 4 and Image.open(path).size == (2 * 28 * k + codec.STRIP_GAP, 28 * k)
    assert [p.name for p in tmp_path.iterdir()] == ["strip.png"]  # no temporary left behind
    # saved grids are for people too: 62 px of tiles become 5 x 62 = 310 >= 256, each pixel repeated
    saved = np.asarray(Image.open(codec.save_grid(images, tmp_path / "grid.png")))
    assert saved.shape[:2] == (5 * 62, 5 * 62)
    np.testing.assert_array_equal(saved[::5, ::5], grid[:, :, 0])
    pair = Image.open(codec.save_side_by_side([images, images], tmp_path / "pair.png"))
    assert pair.size == (2 * 5 * 62 + codec.STRIP_GAP, 5 * 62)


# ---- occlusions --------------------------------------------------------------------------------------------


def test_occlusions_are_seeded_per_image_and_previewed_black():
    shape = (1, 28, 28)
    a = occlusions.occlusion_masks("random:0.5", shape, [3, 4])
    np.testing.assert_array_equal(a[1], occlusions.occlusion_mask("random:0.5", shape, 4))
    assert a[0].sum() == round(0.5 * 28 * 28) and not np.array_equal(a[0], a[1])
    centre = occlusions.occlusion_mask("center:10", shape, 0)
    assert centre.sum() == 100 and centre[0, 9:19, 9:19].all()
    image = np.full(shape, 0.5, np.float32)
    preview = occlusions.occluded(image, centre)
    assert (preview[centre > 0.5] == -1).all() and (preview[centre < 0.5] == 0.5).all()
    with pytest.raises(ValueError, match="center:99"):
        occlusions.occlusion_mask("center:99", shape, 0)


# ---- files -------------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    files.atomic_write_json(target, {"a": 1})

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(target, crash)
    assert target.read_text() == '{\n  "a": 1\n}\n' and os.listdir(tmp_path) == ["out.json"]
    assert files.sha256_file(target) == __import__("hashlib").sha256(target.read_bytes()).hexdigest()


def test_replace_dir_swaps_a_whole_directory(tmp_path):
    target = tmp_path / "bundle"
    for version in ("1", "2"):
        tmp = files.make_temp_dir(target)
        (tmp / "v").write_text(version)
        files.replace_dir(tmp, target)
    assert (target / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["bundle"]


# ---- flags -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    name: str = "x"
    steps: int = 3
    rate: float = 0.5
    noise: bool = True
    restarts: int | None = None

    def validate(self) -> DemoConfig:
        if self.steps < 0:
            raise ValueError("--steps: must be >= 0")
        return self


def test_flags_precedence_defaults_then_toml_then_flags(tmp_path):
    parser = flags.Parser(prog="demo")
    flags.add_flags(parser, DemoConfig, {"steps": "how many"})
    toml = tmp_path / "c.toml"
    toml.write_text('steps = 7\nrate = 1\nname = "from-file"\n')
    given = vars(parser.parse_args(["--rate", "0.25", "--no-noise"]))
    config = flags.resolve(DemoConfig, given, str(toml))
    assert config == DemoConfig(name="from-file", steps=7, rate=0.25, noise=False, restarts=None)
    assert flags.resolve(DemoConfig, vars(parser.parse_args(["--restarts", "2"]))).restarts == 2
    assert "how many (default: 3)" in parser.format_help()
    assert flags.from_dict(DemoConfig, {"steps": 1, "gone": True}) == DemoConfig(steps=1)


def test_flag_errors_are_one_line(tmp_path, capsys):
    parser = flags.Parser(prog="demo")
    flags.add_flags(parser, DemoConfig, {})
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--steps", "many"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "see demo --help" in err
    toml = tmp_path / "c.toml"
    for text, words in (("stepz = 1", "unknown key 'stepz'"), ("steps = true", "steps must be int")):
        toml.write_text(text)
        with pytest.raises(ValueError, match=words):
            flags.resolve(DemoConfig, {}, str(toml))
    code = flags.cli_main("demo", lambda: flags.resolve(DemoConfig, {"steps": -1}) and 0)
    assert code == 2 and capsys.readouterr().err == "demo: error: --steps: must be >= 0\n"


# ---- the sampler -------------------------------------------------------------------------------------------


def test_progress_comes_after_every_step_in_order(engine):
    params = completion_params(latent_steps=3, latent_noise=True, refine_steps=2, restarts=2)
    seen = []
    masks = occlusions.occlusion_masks("center:10", engine.image_shape, [0, 1])
    images = engine.synthesize([5, 6]).images
    out = sampling.run(
        engine.completion_steps(images, masks, [0, 1], params),
        on_progress=lambda p: seen.append((p.phase, p.step, p.value().shape)),
    )
    d, (c, h, w) = engine.latent_dim, engine.image_shape
    assert seen == [("latent", t, (4, d)) for t in (1, 2, 3)] + [
        ("langevin", t, (2, c, h, w)) for t in (0, 1, 2)
    ]
    np.testing.assert_array_equal(out.images[masks < 0.5], images[masks < 0.5])  # observed pixels exactly


def test_should_stop_cancels_between_steps(engine):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled) as e:
        engine.synthesize([0], SynthesisParams(steps=50, delta=0.002, noise=True), should_stop=stop)
    assert e.value.steps_done == 2  # start, step 1, step 2 ran; the 4th check stopped it
    assert len(calls) == 4


def test_image_i_is_its_own_seed_in_any_batch(engine):
    params = dataclasses.replace(engine.synthesis_defaults, steps=3)
    batch = engine.synthesize([7, 8, 9], params)
    alone = engine.synthesize([8], params)
    np.testing.assert_array_equal(batch.images[1], alone.images[0])
    # f(Y) is one conv stack summed: ONNX Runtime may order the sums differently at another batch size, so f
    # is within the float32 bound (the bundle's nets in torch) and E within f's plus its two casts to float32
    bound = float32_bound.energy_of(legacy_nets()[0], alone.images, engine.backend.s)
    f_tolerance = float32_bound.tolerance(bound.score)
    float32_bound.assert_within(batch.score[1:2], alone.score, f_tolerance, "f")
    e_tolerance = float32_bound.energy_tolerance(f_tolerance, alone.energy, casts=2)
    float32_bound.assert_within(batch.energy[1:2], alone.energy, e_tolerance, "E")


def test_params_check_their_ranges_and_name_the_field():
    with pytest.raises(sampling.ParamError) as e:
        SynthesisParams(steps=5, delta=2.0, noise=True).checked(max_steps=10, prefix="langevin.")
    assert e.value.field == "langevin.step_size"
    with pytest.raises(sampling.ParamError) as e:
        completion_params(restarts=17).checked()
    assert e.value.field == "restarts"
    with pytest.raises(sampling.ParamError) as e:
        completion_params(latent_steps=11).checked(max_steps=10)
    assert e.value.field == "latent_steps"
    with pytest.raises(sampling.ParamError) as e:
        completion_params(delta=2.0).checked()
    assert e.value.field == "refine_step_size"  # δ of the refinement, by its name in the request


def jacobi_left(h: int, w: int, sweeps: int) -> float:
    """The largest entry of Jᵏ𝟙: what `sweeps` Jacobi sweeps (inpainting.residual_fill) leave of a unit error
    on an interior h×w hole, the observed ring around it held. In J's sine eigenvectors (entries at most 1,
    eigenvalues λ_pq = (cos(pπ/(h + 1)) + cos(qπ/(w + 1)))/2) 𝟙 has the coefficients c_p·c_q, odd p and q,
    c_p = 2/(h + 1)·cot(pπ/(2(h + 1))); so Jᵏ𝟙 <= Σ|c_p·c_q|·|λ_pq|ᵏ. J is nonnegative, so an error of at most
    M anywhere on the hole is left at most M times this."""
    p, q = np.arange(1, h + 1, 2), np.arange(1, w + 1, 2)
    cp = 2 / (h + 1) / np.tan(p * math.pi / (2 * (h + 1)))
    cq = 2 / (w + 1) / np.tan(q * math.pi / (2 * (w + 1)))
    lam = (np.cos(p * math.pi / (h + 1))[:, None] + np.cos(q * math.pi / (w + 1))[None, :]) / 2
    return float((np.abs(np.outer(cp, cq)) * np.abs(lam) ** sweeps).sum())


def harmonic_error(m: float, h: int, w: int) -> float:
    """How far residual_fill may leave its hole's values from the harmonic solution, for values of size at
    most `m` (started from 0 in the hole): Jacobi's remainder, and float32 rounding, at most 3u·m per sweep
    (three sums of four values; × 0.25 is exact) kept, not grown, by the averaging sweeps."""
    n = inpainting.RESIDUAL_ITERATIONS
    return m * jacobi_left(h, w, n) + n * 3 * U * m


def cg_error(observed: np.ndarray, x_max: float, h: int, w: int) -> float:
    """How far biharmonic_fill at CG_TOL may be from the exact solution, for a hole inside an h×w rectangle at
    least 1 px inside the image, `observed` (N, C, H, W) its input with the hole zeroed, `x_max` the largest
    value it returned. ‖x − x*‖ <= CG_TOL·‖b‖/λ_min(A): A the hole's block of ΔᵀΔ, λ_min(A) at least the
    rectangle's (interlacing), at least λ_D² with λ_D = 4 − 2cos(π/(h + 1)) − 2cos(π/(w + 1)) the rectangle's
    least Dirichlet eigenvalue of −Δ, and ‖b‖ <= ‖ΔᵀΔ‖·‖r0‖ <= 64‖r0‖ per image and channel. Then float64
    rounding, at most κ·2⁻⁵³·‖x‖ per iteration (κ <= 64/λ_D², ‖x‖ <= √(hw)·x_max), and the cast to float32."""
    lam = (4 - 2 * math.cos(math.pi / (h + 1)) - 2 * math.cos(math.pi / (w + 1))) ** 2
    r0 = np.sqrt((observed.astype(np.float64) ** 2).sum(axis=(2, 3))).max()
    rounding = CG_ITERATIONS * (64 / lam) * 2**-53 * math.sqrt(h * w) * x_max
    return CG_TOL * 64 * r0 / lam + rounding + U * x_max


def exact_biharmonic(residual: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return inpainting.biharmonic_fill(residual, mask, max_iterations=CG_ITERATIONS, tol=CG_TOL)


def test_residual_fill_is_the_harmonic_interpolation_of_the_observed_residual():
    """Linear functions are harmonic: a residual that is a ramp on the observed pixels is continued into the
    hole as the same ramp; observed pixels keep their values; a constant stays constant."""
    h = w = 28
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (0.03 * xx - 0.02 * yy + 0.1)[None, None]  # (1, 1, H, W)
    mask = np.zeros((1, 1, h, w), np.float32)
    mask[..., 8:20, 6:22] = 1  # an interior hole
    garbage = np.where(mask > 0.5, 7.0, ramp)  # values under the hole must not matter
    r = inpainting.residual_fill(garbage, mask)
    np.testing.assert_array_equal(r[mask < 0.5], ramp[mask < 0.5])
    # the float32 ramp is within 4u of the linear function (seven roundings of terms below 1), and so (maximum
    # principle) is the harmonic solution from its observed values; the hole is 12×16, the values below `big`
    big = float(np.abs(ramp).max())
    assert np.abs(r - ramp).max() <= harmonic_error(big, 12, 16) + 8 * U
    constant = inpainting.residual_fill(np.full((2, 3, h, w), 0.25, np.float32), mask)
    np.testing.assert_allclose(constant, 0.25, rtol=0, atol=harmonic_error(0.25, 12, 16))


def test_biharmonic_fill_continues_curved_residuals_that_the_harmonic_one_flattens():
    """A quadratic has a constant Laplacian, so it is biharmonic (Δ² = 0): observed on all but an interior
    hole, biharmonic_fill continues it into the hole exactly, where the harmonic fill (Δ = 0) sags.
    Observed pixels keep their values; a constant stays constant."""
    h = w = 28
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # dyadic coefficients: the bowl is exact in float32, so its continuation is exactly the bowl
    bowl = 2**-9 * (xx - 13) ** 2 + 2**-10 * (yy - 9) ** 2 - 0.3125  # (H, W)
    bowl = bowl[None, None].astype(np.float32)  # (1, 1, H, W)
    mask = np.zeros((1, 1, h, w), np.float32)
    mask[..., 8:20, 6:22] = 1  # an interior hole, 3+ px from the edges, 12×16
    garbage = np.where(mask > 0.5, 7.0, bowl).astype(np.float32)  # values under the hole must not matter
    r = exact_biharmonic(garbage, mask)
    np.testing.assert_array_equal(r[mask < 0.5], bowl[mask < 0.5])
    observed = np.where(mask > 0.5, 0, bowl)
    assert np.abs(r - bowl).max() <= cg_error(observed, np.abs(r).max(), 12, 16)
    # the harmonic fill sags, by far more than its solver's error (harmonic_error: below 1e-4 here)
    assert np.abs(inpainting.residual_fill(garbage, mask) - bowl).max() > 0.05
    constant = np.full((2, 3, h, w), 0.25, np.float32)
    filled = exact_biharmonic(constant, mask)
    bound = cg_error(np.where(mask > 0.5, 0, constant), np.abs(filled).max(), 12, 16)
    np.testing.assert_allclose(filled, 0.25, rtol=0, atol=bound)


def test_biharmonic_fill_solves_scikit_images_equation_away_from_the_edges():
    """Inside the image both solve Δ²r = 0 on the hole with the same 13-point stencil; only the edge
    treatment differs (replicated here), so holes 2+ px from the edges agree."""
    from skimage.restoration import inpaint_biharmonic

    rng = np.random.default_rng(0)
    residual = rng.normal(0, 0.3, (2, 1, 28, 28)).astype(np.float32)  # (N, C, H, W)
    mask = np.zeros_like(residual)
    mask[0, :, 8:20, 8:20] = 1  # a block
    mask[1, :, 3:25, 3:25] = rng.random((22, 22)) < 0.5  # scattered pixels
    got = exact_biharmonic(residual, mask)
    # scikit-image solves the same equations directly in float64 (rounding ~κ·2⁻⁵³·‖x‖, below CG's, counted
    # once more): the difference is CG's error (both holes inside rows and columns 3..24, 22×22) and that
    x_max = float(np.abs(got).max())
    bound = 2 * cg_error(np.where(mask > 0.5, 0, residual), x_max, 22, 22)
    for i in range(2):
        want = inpaint_biharmonic(residual[i, 0].astype(np.float64), mask[i, 0] > 0.5)
        np.testing.assert_allclose(got[i, 0], want, rtol=0, atol=bound)


def test_biharmonic_fill_of_an_image_does_not_depend_on_its_batch():
    """Conjugate gradients stop per image and channel: an easy image (few scattered pixels) converges long
    before a hard one (a wide random hole), and in one batch it keeps the fill it has alone, bit for bit, as
    image i of a completion must whatever requests share its batch. Had the batch run on until every image
    converged, the easy one would take further steps and move."""
    shape = (3, 32, 32)
    masks = np.concatenate([occlusions.occlusion_masks(o, shape, [0]) for o in ("random:0.1", "random:0.8")])
    residual = np.random.default_rng(2).normal(0, 0.3, (2, *shape)).astype(np.float32)
    both = inpainting.biharmonic_fill(residual, masks)
    for i in range(2):
        np.testing.assert_array_equal(
            both[i : i + 1], inpainting.biharmonic_fill(residual[i : i + 1], masks[i : i + 1])
        )


def test_scattered_fraction_and_auto_pick_the_interpolant_per_image():
    """scattered_fraction: the share of missing pixels with an observed 4-neighbour (44 of a 12×12 square's
    144; 28 of a half image's 392; every pixel of a random mask at 30%, nearly). "auto" takes the biharmonic
    fill for the scattered image and the harmonic one for the block, in one batch."""
    shape, seeds = (1, 28, 28), [0, 1, 2]
    masks = np.concatenate(
        [occlusions.occlusion_masks(o, shape, seeds[:1]) for o in ("center:12", "left-half", "random:0.3")]
    )  # (3, 1, H, W)
    fraction = inpainting.scattered_fraction(masks)
    # counts of pixels, then one correctly rounded quotient each side: equal
    np.testing.assert_array_equal(fraction[:2], [44 / 144, 28 / 392])
    assert fraction[2] > 0.95 and inpainting.scattered_fraction(np.zeros_like(masks[:1]))[0] == 0
    residual = np.random.default_rng(1).normal(0, 0.3, (3, *shape)).astype(np.float32)
    auto = inpainting.interpolate_residual(residual, masks, "auto")
    # each fill on the images it picks: the same float64 computation on the same inputs, so equal (each image
    # stops at its own convergence: test_biharmonic_fill_of_an_image_does_not_depend_on_its_batch)
    np.testing.assert_array_equal(auto[2:], inpainting.biharmonic_fill(residual[2:], masks[2:]))
    np.testing.assert_array_equal(auto[:2], inpainting.residual_fill(residual[:2], masks[:2]))
    # they solve different equations, and their answers differ by far more than float32 rounding
    assert np.abs(auto[2] - inpainting.residual_fill(residual, masks)[2]).max() > 1e-2
    with pytest.raises(sampling.ParamError) as e:
        completion_params(residual_interpolant="cubic").checked()
    assert e.value.field == "residual_interpolant"


def test_completion_with_residual_fill_differs_only_in_the_hole_and_starts_closer(engine):
    """On the legacy bundle's graphs: the fill before refinement is g(X) plus the interpolated residual, so
    it differs from the plain fill only on missing pixels, and (g fitting the visible pixels imperfectly)
    the residual is not zero there. That it is the better guess needs a trained model:
    tests/contract/test_reference_bundle.py."""
    images = engine.synthesize([5, 6]).images
    masks = occlusions.occlusion_masks("random:0.5", engine.image_shape, [0, 1])
    fills = {}
    for residual in (False, True):
        params = completion_params(latent_steps=3, refine_steps=0, residual_fill=residual)
        fills[residual] = engine.complete(images, masks, [0, 1], params).images
    np.testing.assert_array_equal(fills[True][masks < 0.5], fills[False][masks < 0.5])
    assert np.abs(fills[True] - fills[False])[masks > 0.5].max() > 1e-3


def test_average_restarts_fills_the_hole_with_the_mean_of_the_chains(engine):
    """average_restarts: the hole gets the mean over the R chains of g(X_r), the chains being exactly those
    the lowest-U choice picks from (contract.sampling.latent_chains); observed pixels come back exactly; with
    one chain the two choices are the same completion."""
    images = engine.synthesize([5, 6]).images  # (2, C, H, W)
    masks = occlusions.occlusion_masks("center:12", engine.image_shape, [0, 1])
    base = completion_params(latent_steps=4, refine_steps=0, restarts=3)
    got = engine.complete(images, masks, [0, 1], dataclasses.replace(base, average_restarts=True)).images
    rep = (np.repeat(images, 3, axis=0), np.repeat(masks, 3, axis=0))  # (N·R, C, H, W)
    x = sampling.run(sampling.latent_chains(engine.backend, *rep, sampling.rngs_for([0, 1]), base))
    mean = engine.backend.generate(x).reshape(2, 3, *images.shape[1:]).mean(axis=1)  # (N, C, H, W)
    # the engine ran the very same chains, graph call (one batch of N·R) and mean: equal, bit for bit
    np.testing.assert_array_equal(got[masks > 0.5], mean[masks > 0.5])
    np.testing.assert_array_equal(got[masks < 0.5], images[masks < 0.5])
    lowest = engine.complete(images, masks, [0, 1], base).images
    assert np.abs(lowest - got)[masks > 0.5].max() > 1e-3  # three chains do not agree
    one = dataclasses.replace(base, restarts=1)
    np.testing.assert_array_equal(
        engine.complete(images, masks, [0, 1], dataclasses.replace(one, average_restarts=True)).images,
        engine.complete(images, masks, [0, 1], one).images,
    )


def test_an_entry_point_names_the_fix_for_a_protobuf_older_than_generated_code(monkeypatch, capsys):
    """A gRPC package's stubs that refuse the installed protobuf
    (google.protobuf.runtime_version.VersionError) give one line with the pip command that fixes the
    environment, not a traceback."""
    import importlib

    from coopnets.contract.flags import PROTOBUF_MISMATCH, extra_main

    class VersionError(Exception):
        pass

    def refuse(name):
        raise VersionError("Detected mismatched Protobuf Gencode/Runtime major versions when loading x.proto")

    monkeypatch.setattr(importlib, "import_module", refuse)
    assert extra_main("coop-serve", "coopnets.serving.server:main", (), "")([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and PROTOBUF_MISMATCH in err and "pip install" in err
