"""Records what the service answered at commit 3891903 (before the contract/sampler restructuring), on a tiny
bundle written by that commit's exporter: tests/contract/test_legacy_bundle.py replays the same requests against the
current service and compares. Run from a checkout of 3891903:

    PYTHONPATH=.:protos python tests/data/legacy/record.py tests/data/legacy

It writes OUT/bundle/ (the bundle as that exporter wrote it) and OUT/cases.json: per case the RPC, the request
and the response, each as base64 protobuf bytes (field numbers never change, so they parse with any later
version of coopnets.proto).
"""

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from torch import nn

from trainer.export import export_bundle
from trainer.nets import LEAK, NetSpec, build_nets

LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 4, "sigma": 0.3, "noise": True}
COMPLETION = {"latent_steps": 6, "latent_step_size": 0.05, "latent_noise": False, "refine_steps": 3, "restarts": 2}


def tiny_nets():
    """The mnist28 nets' layer kinds at a fraction of the width (latent d = 8), seeded, weights scaled so that
    f(Y) and its gradient are far from zero, BatchNorm running statistics not the identity."""
    torch.manual_seed(0)
    spec = NetSpec("mnist28", 1, 8)
    descriptor, generator = build_nets(spec)
    lrelu = lambda: nn.LeakyReLU(LEAK)  # noqa: E731
    descriptor.body = nn.Sequential(
        nn.Conv2d(1, 8, 4, 2, 1), lrelu(),  # (N, 8, 14, 14)
        nn.Conv2d(8, 16, 4, 2, 1), lrelu(),  # (N, 16, 7, 7)
        nn.Conv2d(16, 10, 7, 1, 0),  # (N, 10, 1, 1)
    )
    generator.body = nn.Sequential(
        nn.Unflatten(1, (8, 1, 1)),
        nn.ConvTranspose2d(8, 16, 7, 1, 0), nn.BatchNorm2d(16), lrelu(),  # (N, 16, 7, 7)
        nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), lrelu(),  # (N, 8, 14, 14)
        nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh(),  # (N, 1, 28, 28)
    )
    with torch.no_grad():
        for net, std in ((descriptor, 0.2), (generator, 0.3)):
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    m.weight.normal_(0, std)
                    m.bias.normal_(0, 0.05)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
    return descriptor.eval(), generator.eval()


def b64(msg) -> str:
    return base64.b64encode(msg.SerializeToString()).decode()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    descriptor, generator = tiny_nets()
    bundle = export_bundle(descriptor, generator, out / "bundle", langevin=LANGEVIN, completion=COMPLETION)
    port_file = out / ".port.json"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--bundle", str(bundle), "--port", "0",
                             "--port-file", str(port_file), "--device", "cpu", "--threads", "1"])
    try:
        while not port_file.exists():
            time.sleep(0.05)
        port = json.loads(port_file.read_text())["port"]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.CoopNetsStub(channel)
        while True:
            try:
                stub.ModelInfo(pb.ModelInfoRequest(), timeout=5)
                break
            except grpc.RpcError:
                time.sleep(0.1)
        rng = np.random.default_rng(0)
        photo = np.clip(rng.normal(0, 0.5, (1, 28, 28)), -1, 1).astype(np.float32)  # (C, H, W)
        tensor = lambda a: pb.Image(tensor=pb.Tensor(shape=list(a.shape), data=a.astype("<f4").tobytes()))  # noqa: E731
        hole = np.zeros((1, 28, 28), np.float32)
        hole[:, 5:15, 8:20] = 1
        T = pb.IMAGE_FORMAT_TENSOR
        cases = [
            ("Synthesize", pb.SynthesizeRequest(count=3, seed=5, format=T)),
            ("Synthesize", pb.SynthesizeRequest(count=2, seed=11, format=T,
                                                langevin=pb.LangevinParams(steps=7, step_size=0.003, noise=False))),
            ("Synthesize", pb.SynthesizeRequest(count=2, seed=0)),  # PNG
            ("SynthesizeStream", pb.SynthesizeStreamRequest(request=pb.SynthesizeRequest(count=2, seed=1, format=T),
                                                            snapshot_every=2)),
            ("Complete", pb.CompleteRequest(image=tensor(photo), occlusion="center:10", seed=3, format=T)),
            ("Complete", pb.CompleteRequest(image=tensor(photo), occlusion="random:0.5", seed=4, format=T,
                                            restarts=1, latent_steps=5, refine_steps=2, noise=False)),
            ("Complete", pb.CompleteRequest(image=tensor(photo), mask=tensor(hole), seed=9, format=T, restarts=3,
                                            latent_step_size=0.04, refine_step_size=0.003)),
            ("Complete", pb.CompleteRequest(image=tensor(photo), occlusion="rects", seed=2)),  # PNG
            ("Energy", pb.EnergyRequest(images=[tensor(photo), tensor(-photo), tensor(np.zeros_like(photo))])),
            ("ModelInfo", pb.ModelInfoRequest()),
        ]
        recorded = []
        for rpc, req in cases:
            if rpc == "SynthesizeStream":
                resp = [b64(ev) for ev in stub.SynthesizeStream(req, timeout=60)]
            else:
                resp = b64(getattr(stub, rpc)(req, timeout=60))
            recorded.append({"rpc": rpc, "request": b64(req), "response": resp})
        (out / "cases.json").write_text(json.dumps({"commit": "3891903", "cases": recorded}, indent=1) + "\n")
        channel.close()
    finally:
        proc.terminate()
        proc.wait(30)
        port_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
