"""The .proto from another gRPC implementation: Node's @grpc/grpc-js + @grpc/proto-loader call Synthesize.

`npm install` runs once into a cache directory keyed by tests/system/node/package.json (COOPNETS_NODE_CACHE,
default ~/.cache/coopnets-node-test); skipped only when node or npm are not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.network]  # npm install from the npm registry

NODE_DIR = ROOT / "tests" / "system" / "node"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(
            "node and npm are not installed: the non-Python client test needs them (apt install nodejs npm)"
        )
    package = (NODE_DIR / "package.json").read_bytes()
    cache = Path(os.environ.get("COOPNETS_NODE_CACHE", Path.home() / ".cache" / "coopnets-node-test"))
    target = cache / hashlib.sha256(package).hexdigest()[:16]
    if not (target / "node_modules" / "@grpc" / "grpc-js").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_bytes(package)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            check=True,
            timeout=300,
            capture_output=True,
        )
    return target / "node_modules"


def test_node_client_calls_synthesize(coop_server, client, node_modules):
    proc = subprocess.run(
        ["node", str(NODE_DIR / "synth.js"), coop_server.address, "3", "12", TOKEN],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["seeds"] == [12, 13, 14] and result["shapes"] == [[1, 28, 28]] * 3
    ref = client.synthesize(count=3, seed=12)
    # the same server's answer to the same request (the same batch on the same graphs), and a proto float is
    # a float32 that JavaScript's doubles and JSON carry exactly: equal
    np.testing.assert_array_equal(np.float32(result["energy"]), ref.energy)
    np.testing.assert_array_equal(np.float32(result["first_pixels"]), ref.images[0].reshape(-1)[:8])
