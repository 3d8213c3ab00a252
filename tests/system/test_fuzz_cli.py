"""Bad files into the loaders and CLIs: one clear line and a non-zero exit, never a traceback.

Property-based: arbitrary bytes as idx files (raw and gzipped), npz files, images in a training folder, and
arbitrary JSON edits of a bundle's manifest.json: the loaders raise only their own one-line errors (DataError,
BundleError), and a manifest that loads also serves (its sessions open and answer). A manifest that lies
about its graphs or leaves a default's range is refused at start. Then each CLI end to end (in-process, its
real `main`): coop-train on corrupt images, an empty folder, a wrong idx magic number, a truncated checkpoint;
coop-serve and coop-complete on a bundle with a missing or tampered file; coop-export on a file that is not a
checkpoint.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from coopnets.clients.cli import complete_main
from coopnets.contract.bundle import BundleError, read_bundle
from coopnets.contract.sampling import SynthesisParams
from coopnets.serving.engine import Engine
from coopnets.serving.server import main as serve_main
from coopnets.serving.sessions import open_sessions
from coopnets.trainer.cli import export_main, train_main
from coopnets.trainer.data import IDX_IMAGES_MAGIC, DataError, load_images, read_idx_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from support import completion_params

pytestmark = pytest.mark.slow  # property-based: many examples through the loaders

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


CASES: Counter = Counter()  # loader -> fuzz cases run


@pytest.fixture(scope="module", autouse=True)
def print_case_count():
    yield
    print(f"\nloader fuzz: {sum(CASES.values())} cases {dict(sorted(CASES.items()))}")


def idx_header(n: int, h: int, w: int, magic: int = IDX_IMAGES_MAGIC) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in (magic, n, h, w))


def valid_png(size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def one_line_error(capsys, code: int, prefix: str = "") -> str:
    """The CLI's stderr: exactly one line, no traceback; returns it."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


# ---- loaders, property-based -------------------------------------------------------------------------------


@st.composite
def idx_files(draw) -> bytes:
    kind = draw(st.sampled_from(["garbage", "header", "header", "truncated"]))
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    magic = draw(st.sampled_from([IDX_IMAGES_MAGIC, 0x00000801, 0, 2**32 - 1]))
    n, h, w = (draw(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1))) for _ in range(3))
    body = draw(st.binary(max_size=100))
    if kind == "truncated":
        body = b"\0" * min(n * h * w, 4096)
        body = body[: draw(st.integers(0, len(body)))]
    return idx_header(n, h, w, magic) + body


@FUZZ
@given(data=idx_files(), gz=st.sampled_from(["raw", "gz", "gz-truncated", "gz-bitflip"]))
def test_fuzz_idx_files(tmp_path, data, gz):
    CASES["idx"] += 1
    path = tmp_path / ("images.idx" if gz == "raw" else "images.idx.gz")
    blob = data if gz == "raw" else gzip.compress(data)
    if gz == "gz-truncated":
        blob = blob[: len(blob) // 2]
    if gz == "gz-bitflip":
        blob = blob[:12] + bytes([blob[12] ^ 0x55]) + blob[13:]
    path.write_bytes(blob)
    try:
        images = read_idx_images(path)
    except DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert images.dtype == np.uint8 and images.ndim == 3


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.builds(lambda b: b"PK\x03\x04" + b, st.binary(max_size=100)),  # looks like a zip (npz)
        st.builds(lambda b: b"\x93NUMPY" + b, st.binary(max_size=100)),  # looks like a .npy
        st.sampled_from(["empty", "object", "complex", "nan", "2d", "5d", "two", "zero"]),
    )
)
def test_fuzz_npz_files(tmp_path, content):
    CASES["npz"] += 1
    path = tmp_path / "data.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        arrays = {
            "empty": {},
            "object": {"images": np.array([{"a": 1}], dtype=object)},
            "complex": {"images": np.ones((2, 28, 28), np.complex64)},
            "nan": {"images": np.full((2, 28, 28), np.nan)},
            "2d": {"images": np.zeros((28, 28))},
            "5d": {"images": np.zeros((1, 1, 1, 28, 28))},
            "two": {"a": np.zeros(1), "b": np.zeros(1)},
            "zero": {"images": np.zeros((0, 28, 28), np.uint8)},
        }[content]
        with zipfile.ZipFile(path, "w") as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=True)
                zf.writestr(f"{name}.npy", buf.getvalue())
    try:
        images = load_images(f"npz:{path}", size=28, channels=1)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert images.dtype == np.uint8 and images.shape[1:] == (1, 28, 28)


def test_a_png_with_a_corrupted_chunk_is_skipped_not_raised(tmp_path):
    """The case hypothesis found (byte 36 of a valid PNG xor 16): Pillow raises SyntaxError on load."""
    blob = valid_png()
    (tmp_path / "broken.png").write_bytes(blob[:36] + bytes([blob[36] ^ 16]) + blob[37:])
    with pytest.raises(DataError, match="no readable images"):
        load_images(f"folder:{tmp_path}", size=28, channels=1)
    (tmp_path / "good.png").write_bytes(blob)
    assert load_images(f"folder:{tmp_path}", size=28, channels=1).shape == (1, 1, 28, 28)


@FUZZ
@given(
    files=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                lambda i, b: valid_png()[:i] + b, st.integers(0, 200), st.binary(max_size=20)
            ),  # truncated
            st.builds(
                lambda i, x: (lambda p: p[:i] + bytes([p[i] ^ x]) + p[i + 1 :])(valid_png()),
                st.integers(0, 300),
                st.integers(1, 255),
            ),  # one corrupted byte
        ),
        min_size=1,
        max_size=4,
    ),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tiff", ".bmp", ".webp"]),
)
def test_fuzz_image_folders(tmp_path_factory, files, suffix):
    CASES["folder"] += 1
    root = tmp_path_factory.mktemp("folder")
    for i, blob in enumerate(files):
        (root / f"img{i}{suffix}").write_bytes(blob)
    try:
        images = load_images(f"folder:{root}", size=28, channels=1)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert images.dtype == np.uint8 and images.shape[1:] == (1, 28, 28)


def json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )


MANIFEST_PATHS = [
    (),
    ("format",),
    ("format_version",),
    ("image",),
    ("image", "shape"),
    ("latent_dim",),
    ("langevin",),
    ("langevin", "s"),
    ("langevin", "steps"),
    ("completion",),
    ("completion", "latent_steps"),
    ("graphs",),
    ("graphs", "generator"),
    ("graphs", "generator", "file"),
    ("files",),
    ("files", "generator.onnx"),
    ("files", "generator.onnx", "sha256"),
    ("net",),
]


# tiny graphs: sessions open in milliseconds
LEGACY = Path(__file__).parents[1] / "data" / "legacy" / "bundle"
ONE_STEP = SynthesisParams(steps=1, delta=0.002, noise=True)
ONE_STEP_COMPLETION = completion_params(restarts=2)


def edited_bundle(root: Path, edits=(), raw: bytes | None = None) -> Path:
    """A bundle at `root` whose ONNX files link to the legacy bundle's and whose manifest is the legacy one
    with `edits` ((key path, value) pairs) applied, or the bytes `raw`."""
    root.mkdir(parents=True, exist_ok=True)
    for f in LEGACY.glob("*.onnx"):
        (root / f.name).symlink_to(f.resolve())
    if raw is not None:
        (root / "manifest.json").write_bytes(raw)
        return root
    manifest = json.loads((LEGACY / "manifest.json").read_text())
    for path, value in edits:
        if not path:
            manifest = value
            continue
        node = manifest
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[path[-1]] = value
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def load_and_serve(root: Path) -> None:
    """What coop-serve does with a bundle before SERVING, and one request of each kind; only BundleError (one
    line) may stop it."""
    try:
        bundle = read_bundle(root)
        engine = Engine(bundle, open_sessions(bundle, device="cpu", threads=1))
    except BundleError as e:
        assert "\n" not in str(e)
        return
    out = engine.synthesize([0], ONE_STEP)
    masks = np.ones((1, *engine.image_shape), np.float32)  # (1, C, H, W), all missing
    rec = engine.complete(out.images, masks, [0], ONE_STEP_COMPLETION)
    assert np.isfinite(out.images).all() and np.isfinite(rec.images).all()
    assert np.isfinite(engine.energy(out.images)[0]).all()
    default = engine.synthesis_defaults
    assert default.steps >= 0 and 0 < default.delta <= 1 and engine.backend.s > 0 and engine.backend.sigma > 0


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS), json_values()), min_size=1, max_size=3),
    raw=st.one_of(st.none(), st.binary(max_size=50)),
)
def test_fuzz_bundle_manifest(tmp_path_factory, edits, raw):
    """Arbitrary JSON at any manifest key (or bytes that are not JSON / UTF-8): BundleError, or a bundle whose
    sessions open and answer."""
    CASES["manifest"] += 1
    load_and_serve(edited_bundle(tmp_path_factory.mktemp("b"), edits, raw))


LIES = {  # a manifest that disagrees with its graphs or leaves a default's range -> the words of the error
    "latent_dim 5": ([(("latent_dim",), 5)], "latent"),
    "image shape": ([(("image", "shape"), [1, 14, 14])], "shape"),
    "3 channels": ([(("image", "shape"), [3, 28, 28])], "shape"),
    "s = -1": ([(("langevin", "s"), -1)], "langevin.s"),
    "delta NaN": ([(("langevin", "delta"), float("nan"))], "langevin.delta"),
    "sigma 0": ([(("langevin", "sigma"), 0)], "langevin.sigma"),
    "steps -3": ([(("langevin", "steps"), -3)], "langevin.steps"),
    "steps 2.5": ([(("langevin", "steps"), 2.5)], "langevin.steps"),
    "noise 'yes'": ([(("langevin", "noise"), "yes")], "langevin.noise"),
    "restarts 0": ([(("completion", "restarts"), 0)], "completion.restarts"),
    "latent step 5": ([(("completion", "latent_step_size"), 5.0)], "completion.latent_step_size"),
    "interpolant x": ([(("completion", "residual_interpolant"), "x")], "completion.residual_interpolant"),
    "graph inputs": ([(("graphs", "generator", "inputs"), [{"name": "x", "shape": ["N", 8]}])], "inputs"),
    "file outside": ([(("graphs", "generator", "file"), "../generator.onnx")], "generator"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_manifest_that_lies_is_refused_at_start_with_one_line(lie, tmp_path, capsys):
    edits, words = LIES[lie]
    bundle = edited_bundle(tmp_path / "b", edits)
    with pytest.raises(BundleError, match="re-export|re-copy|fix the manifest"):
        Engine(read_bundle(bundle), open_sessions(read_bundle(bundle), device="cpu", threads=1))
    code = serve_main(["--bundle", str(bundle), "--port", "0", "--device", "cpu"])
    assert code == 2
    assert words in one_line_error(capsys, code, "coop-serve: ")


# ---- the CLIs, end to end ----------------------------------------------------------------------------------


@pytest.fixture()
def broken_bundles(serving_bundle, tmp_path) -> dict[str, Path]:
    out = {}
    for kind in ("missing", "tampered"):
        b = tmp_path / kind
        shutil.copytree(serving_bundle, b)
        target = b / "langevin_step.onnx"
        if kind == "missing":
            target.unlink()
        else:
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
        out[kind] = b
    return out


def test_coop_train_bad_data_is_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(valid_png()[:40])
    (corrupt / "b.jpg").write_bytes(b"not a jpeg")
    empty = tmp_path / "empty"
    empty.mkdir()
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    (idx_dir / "train-images-idx3-ubyte").write_bytes(idx_header(1, 28, 28, magic=0x00000801) + b"\0" * 784)
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    (gz_dir / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_header(1, 28, 28) + b"\0" * 784)[:30]
    )
    cases = [
        (["--dataset", f"folder:{corrupt}"], "no readable images"),
        (["--dataset", f"folder:{empty}"], "no readable images"),
        (["--dataset", "fashion-mnist", "--data-dir", str(idx_dir)], "magic number"),
        (["--dataset", "fashion-mnist", "--data-dir", str(gz_dir)], "cannot read"),
    ]
    for argv, words in cases:
        code = train_main([*argv, "--out", str(tmp_path / "run"), "--dry-run"])
        assert words in one_line_error(capsys, code, "coop-train: error: "), argv


def test_coop_train_resume_from_a_truncated_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated torch zip")
    code = train_main(["--dataset", "digits", "--image-size", "28", "--out", str(run), "--resume"])
    assert "not a readable coopnets checkpoint" in one_line_error(capsys, code, "coop-train: error: ")
    code = export_main([str(run / "checkpoint.pt"), str(tmp_path / "bundle")])
    assert "not a readable coopnets checkpoint" in one_line_error(capsys, code, "coop-export: error: ")


def test_coop_serve_refuses_a_missing_or_tampered_bundle_file(broken_bundles, capsys):
    for kind, words in (("missing", "is missing"), ("tampered", "does not match its sha256")):
        code = serve_main(["--bundle", str(broken_bundles[kind]), "--port", "0", "--device", "cpu"])
        assert code == 2
        assert words in one_line_error(capsys, code, "coop-serve: ")


def test_coop_complete_bad_bundle_and_bad_images_are_one_line(
    broken_bundles, serving_bundle, tmp_path, capsys
):
    good, bad, small = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "small.png"
    good.write_bytes(valid_png())
    bad.write_bytes(valid_png()[:50])
    small.write_bytes(valid_png((10, 10)))
    out = str(tmp_path / "out")
    cases = [
        ([str(good), "--occlude", "center:14", "--bundle", str(broken_bundles["tampered"])], "sha256"),
        ([str(good), "--occlude", "center:14", "--bundle", str(broken_bundles["missing"])], "is missing"),
        ([str(bad), "--occlude", "center:14", "--bundle", str(serving_bundle)], "bad.png"),
        ([str(small), "--occlude", "center:14", "--bundle", str(serving_bundle)], "small.png"),
        ([str(good), "--mask", str(small), "--bundle", str(serving_bundle)], "small.png"),
        ([str(good), "--occlude", "center:99", "--bundle", str(serving_bundle)], "center:99"),
        (
            [str(tmp_path / "absent.png"), "--occlude", "center:14", "--bundle", str(serving_bundle)],
            "absent.png",
        ),
    ]
    for argv, words in cases:
        code = complete_main([*argv, "--out", out, "--device", "cpu"])
        assert words in one_line_error(capsys, code, "coop-complete: "), argv
