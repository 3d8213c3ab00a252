"""Fixtures shared by the tests; helpers live in support.py.

`tiny_nets` are the real mnist28 nets from trainer.nets with seeded weights (scaled up from the official init
so that f(Y) and its gradient are far from zero and the equality tests mean something); `serving_bundle` is
them exported by trainer.export.export_bundle with small default step counts, and `serving_engine` that bundle
opened on one CPU thread; `rgb_bundle` is the same for color (cifar32 nets, 3×32×32). `coop_server` is ONE
in-process coop-serve for the whole session (support.local_server), with a bearer token; tests that use it
compare counters before and after, never absolute counts; `token_file` holds its token. `pki` is a
throw-away certificate authority (support.make_pki).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import COMPLETION, LANGEVIN, TOKEN, local_server, make_pki


@pytest.fixture(scope="session", autouse=True)
def _coopnets_cache(tmp_path_factory):
    """Folder datasets cache their decoded arrays in $COOPNETS_CACHE: the tests' (and their subprocesses')
    go to a temporary folder, never into the user's ~/.cache/coopnets."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COOPNETS_CACHE", str(tmp_path_factory.mktemp("coopnets-cache")))
        yield


def scaled_nets(arch: str, channels: int, latent_dim: int, seed: int):
    """trainer.nets' nets built after torch.manual_seed(seed), their weights (not biases) scaled up by 4
    (descriptor) and 8 (generator), in eval mode."""
    import torch
    from coopnets.trainer.nets import NetSpec, build_nets

    torch.manual_seed(seed)
    descriptor, generator = build_nets(NetSpec(arch, channels, latent_dim))
    with torch.no_grad():
        for net, scale in ((descriptor, 4.0), (generator, 8.0)):
            for p in net.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    return descriptor.eval(), generator.eval()


@pytest.fixture(scope="session")
def tiny_nets():
    return scaled_nets("mnist28", 1, 100, seed=0)


@pytest.fixture(scope="session")
def serving_bundle(tiny_nets, tmp_path_factory) -> Path:
    from coopnets.trainer.export import export_bundle

    descriptor, generator = tiny_nets
    out = tmp_path_factory.mktemp("serving") / "bundle"
    return export_bundle(descriptor, generator, out, langevin=LANGEVIN, completion=COMPLETION)


@pytest.fixture(scope="session")
def rgb_bundle(tmp_path_factory) -> Path:
    """A tiny color bundle: trainer.nets' cifar32 nets (3×32×32, latent 16) with seeded weights scaled up as
    tiny_nets' are, so that the descriptor moves a hole visibly; exported as serving_bundle is."""
    from coopnets.trainer.export import export_bundle

    descriptor, generator = scaled_nets("cifar32", 3, 16, seed=1)
    out = tmp_path_factory.mktemp("rgb") / "bundle"
    return export_bundle(descriptor, generator, out, langevin=LANGEVIN, completion=COMPLETION)


@pytest.fixture()
def token_file(tmp_path) -> str:
    """A file holding the session's bearer token (TOKEN), as the clients' --token-file reads it."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture(scope="session")
def serving_engine(serving_bundle):
    from coopnets.serving.engine import Engine

    return Engine.open(serving_bundle, device="cpu", threads=1)


@pytest.fixture(scope="session")
def coop_server(serving_bundle, tmp_path_factory):
    """The session's server: token auth, batching up to 16 images within 100 ms, REST on a free port."""
    server = local_server(
        serving_bundle,
        tmp_path_factory.mktemp("server"),
        token=TOKEN,
        max_batch=16,
        max_delay_ms=100,
        max_count=32,
        max_steps=200,
        http_port=0,
    )
    yield server
    assert server.stop(), server.log()


@pytest.fixture()
def client(coop_server):
    with coop_server.client(timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))
