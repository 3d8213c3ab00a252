"""The base install, for real: a fresh venv without torch, at the LOWEST versions pyproject.toml admits.

`pip install coopnets` (no extra) must serve and call bundles: coop-serve, coop-client and coop-complete
--bundle run from that venv, outside the source tree, on tests/data/legacy/bundle. The venv is pinned to the
lower bounds of the declared ranges (protobuf 4.25.1, grpcio and its health/reflection/status packages 1.62.0)
because the committed stubs claim to run there (protos/protogen.py); the project's own venv runs the newest.
pip resolves the base dependencies itself (no --no-deps), so a dependency missing from the base list fails
here. One venv for both claims keeps CI short: the lowest versions are also a torch-free install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import ROOT, spawn, wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.network]  # builds venvs, pip installs from PyPI

LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"
LOWEST = {
    "protobuf": "4.25.1",
    "grpcio": "1.62.0",
    "grpcio-health-checking": "1.62.0",
    "grpcio-reflection": "1.62.0",
    "grpcio-status": "1.62.0",
    "grpcio-tools": "1.62.0",  # only for the .proto test run below; not a base dependency
}


def _run(argv, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, **kw)
    assert out.returncode == 0, (
        f"{argv[:3]} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def site_packages_mb(prefix: Path) -> float:
    """Size of a venv's site-packages in MiB (what `du -sm` says), for docs/production.md's install sizes."""
    (site,) = prefix.glob("lib/python*/site-packages")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("base") / "venv"
    venv.create(prefix, with_pip=True)
    constraints = prefix.parent / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in LOWEST.items()))
    # built from a copy: pip builds in the source tree, and a stale build/ there would go into the wheel
    source = prefix.parent / "src"
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "runs", "tests", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints)]
    _run([*pip, str(source), "pytest", "grpcio-tools"], cwd=prefix.parent, timeout=900)
    return prefix


def test_the_base_install_has_no_torch_and_the_lowest_protobuf(base_venv):
    py = str(base_venv / "bin" / "python")
    code = (
        "import importlib.util as u, importlib.metadata as m, json;"
        "from coopnets.v1 import coopnets_pb2, coopnets_pb2_grpc;"
        "print(json.dumps({'absent': [n for n in ('torch', 'onnx', 'onnxscript', 'tensorboard', 'sklearn',"
        " 'skimage', 'cv2', 'tqdm') if u.find_spec(n)], 'protobuf': m.version('protobuf'),"
        " 'grpcio': m.version('grpcio')}))"
    )
    found = json.loads(_run([py, "-c", code], cwd=base_venv.parent).stdout)
    assert found == {"absent": [], "protobuf": LOWEST["protobuf"], "grpcio": LOWEST["grpcio"]}
    print(f"base install: {site_packages_mb(base_venv):.0f} MiB of site-packages")


def test_the_wheel_installs_one_import_name(base_venv):
    """Only `coopnets` lands at the top of site-packages (beside its dist-info): the layers are its
    subpackages, so no PyPI project named trainer, clients or evaluation is overwritten, and no folder of a
    user's shadows ours."""
    py = str(base_venv / "bin" / "python")
    code = (
        "import importlib.metadata as m, json;"
        "files = m.distribution('coopnets').files;"
        "tops = {f.parts[0] for f in files if f.parts[0].endswith('.py') or len(f.parts) > 1};"
        "print(json.dumps(sorted(t for t in tops if not t.endswith(('.dist-info', '.data', '..')))))"
    )
    assert json.loads(_run([py, "-c", code], cwd=base_venv.parent).stdout) == ["coopnets"]


def test_the_installed_package_finds_its_shipped_reference_bundle(base_venv, tmp_path):
    """`--bundle reference` names the bundle installed with the package (package data), outside any clone."""
    py = str(base_venv / "bin" / "python")
    code = (
        "from coopnets.contract.bundle import read_bundle, resolve_bundle;"
        "read_bundle('reference'); print(resolve_bundle('reference'))"
    )
    where = Path(_run([py, "-c", code], cwd=tmp_path).stdout.strip())
    assert where.is_relative_to(base_venv) and (where / "manifest.json").is_file()


def test_the_train_extras_commands_say_what_to_install_on_a_base_install(base_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for prog in ("coop-train", "coop-export", "coop-eval"):
        out = subprocess.run(
            [str(base_venv / "bin" / prog), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert out.returncode == 2 and out.stdout == "", (prog, out)
        assert out.stderr.startswith(f"{prog}: error: torch") and "coopnets[train]" in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1  # one line, no traceback


def test_the_proto_tests_pass_on_the_lowest_protobuf(base_venv):
    """The committed stubs (gencode 4.25.1, no runtime check) import and match the .proto on protobuf 4.25."""
    py = str(base_venv / "bin" / "python")
    _run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/serving/test_serving_proto.py"], cwd=ROOT
    )


def test_the_base_install_serves_calls_and_completes(base_venv, tmp_path):
    bin_ = base_venv / "bin"
    server = spawn(
        LEGACY,
        tmp_path / "server",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--warmup-runs",
        "1",
        python=str(bin_ / "python"),
        cwd=tmp_path,
        timeout=120,
    )
    try:
        wait_serving(server.address, 120)
        _run([str(bin_ / "coop-client"), "health", "--server", server.address], cwd=tmp_path)
        info = json.loads(
            _run([str(bin_ / "coop-client"), "info", "--server", server.address], cwd=tmp_path).stdout
        )
        assert "CPUExecutionProvider" in json.dumps(info)
        out = tmp_path / "synth"
        _run(
            [str(bin_ / "coop-client"), "synth", "--server", server.address, "--count", "2", "--seed", "5"]
            + ["--out", str(out)],
            cwd=tmp_path,
        )
        assert np.asarray(Image.open(out / "seed_5.png")).shape == (28, 28)
    finally:
        assert server.stop() == 0, server.log()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "img.png")
    rec = tmp_path / "rec"
    _run(
        [str(bin_ / "coop-complete"), str(tmp_path / "img.png"), "--occlude", "center:10"]
        + ["--bundle", str(LEGACY), "--device", "cpu", "--out", str(rec)],
        cwd=tmp_path,
    )
    recovered = np.asarray(Image.open(rec / "img_recovered.png"))
    observed = np.ones((28, 28), bool)
    observed[9:19, 9:19] = False
    original = np.asarray(Image.open(tmp_path / "img.png"))
    assert (recovered[observed] == original[observed]).all()  # observed pixels come back unchanged


def test_installing_tritonclient_after_coopnets_keeps_coop_serve_working(tmp_path):
    """Triton's docs say `pip install tritonclient[grpc]`; after `pip install coopnets` that pins protobuf
    below 7. Every gRPC package coopnets imports must still load, so coop-serve starts and answers."""
    prefix = tmp_path / "venv"
    venv.create(prefix, with_pip=True)
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "runs", "tests", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, str(source)], cwd=tmp_path, timeout=900)
    _run([*pip, "tritonclient[grpc]"], cwd=tmp_path, timeout=900)
    server = spawn(LEGACY, tmp_path / "server", "--device", "cpu", "--threads", "1", "--warmup-runs", "0",
                   python=str(prefix / "bin" / "python"), cwd=tmp_path, timeout=120)  # fmt: skip
    try:
        wait_serving(server.address, 120)
        _run([str(prefix / "bin" / "coop-client"), "health", "--server", server.address], cwd=tmp_path)
    finally:
        assert server.stop() == 0, server.log()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
