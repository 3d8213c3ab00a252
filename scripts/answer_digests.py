"""Digests of the engine's answers, to show that a change to the code leaves every answer bit for bit.

    python scripts/answer_digests.py [ROOT]                 # ROOT: the tree whose models/ to read (default .)

For the shipped reference, the legacy test bundle and the shipped color bundle: sha256 of 6 synthesized images
and their energies (the bundle's defaults, seeds 0-5), of 4 of them completed under three occlusions (centre
square, random pixels, left half; the bundle's defaults), of E(Y) and f(Y), and of `ood`. Run it under the old
and the new code (for an old checkout: its folders laid out as the `coopnets` package on PYTHONPATH, as
scripts/gpu_reference.sh does) and compare the lines. The grpc, OIP and HTTP answers are these arrays
encoded (tests/serving compare them with the engine).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from coopnets.contract.occlusions import occlusion_masks
from coopnets.serving.engine import Engine

OCCLUSIONS = ("center:12", "random:0.5", "left-half")


def digests(path: Path) -> tuple[str, str]:
    """(sha256 of synthesis, completion and energy answers, sha256 of ood or '-') of one bundle."""
    engine = Engine.open(path, device="cpu", threads=1)
    h = hashlib.sha256()
    samples = engine.synthesize(list(range(6)))
    h.update(samples.images.tobytes() + samples.energy.tobytes())
    images = samples.images[:4]  # (4, C, H, W)
    for name in OCCLUSIONS:
        masks = occlusion_masks(name, images.shape[1:], range(4))
        done = engine.complete(images, masks, list(range(4)))
        h.update(done.images.tobytes() + done.energy.tobytes())
    energy, f = engine.energy(images)
    h.update(energy.tobytes() + f.tobytes())
    ood = engine.ood(images)
    return h.hexdigest()[:16], "-" if ood is None else hashlib.sha256(ood.tobytes()).hexdigest()[:16]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for bundle in (root / "models/reference", root / "tests/data/legacy/bundle", root / "models/cifar10"):
        answers, ood = digests(bundle)
        print(f"{bundle.parent.name}/{bundle.name:<12} answers {answers}  ood {ood}")


if __name__ == "__main__":
    main()
