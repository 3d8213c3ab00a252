"""Rewrites docs/complete-strips-cifar10.png, the README's color completion strips: `coop-complete --occlude
m40 --bundle cifar10` on the first four held-out examples of models/examples/cifar10 (input | occluded |
recovered, each strip as coop-complete writes it), stacked and scaled up 2× with nearest-neighbour pixels
so the 32-px images stay sharp.

    python scripts/readme_strips.py                 # after scripts/ship_reference.sh ... cifar10
    python scripts/readme_strips.py --bundle DIR --out strips.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="cifar10")
    p.add_argument("--examples", default=str(ROOT / "models/examples/cifar10"))
    p.add_argument("--occlude", default="m40")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs/complete-strips-cifar10.png"))
    args = p.parse_args()
    inputs = sorted(Path(args.examples).glob("*.png"))[: args.count]
    if not inputs:
        sys.exit(f"readme_strips.py: no PNG examples in {args.examples}: run scripts/page_examples.py first")
    with tempfile.TemporaryDirectory() as tmp:
        coop_complete = Path(sys.executable).with_name("coop-complete")
        cmd = [str(coop_complete), *map(str, inputs), "--occlude", args.occlude, "--bundle", args.bundle]
        subprocess.run([*cmd, "--out", tmp], check=True)
        strips = [Image.open(Path(tmp) / f"{i.stem}_strip.png").convert("RGB") for i in inputs]
        gap = args.scale
        w = max(s.width for s in strips) * args.scale
        sheet = Image.new("RGB", (w, sum(s.height * args.scale + gap for s in strips) - gap), "white")
        y = 0
        for s in strips:
            sheet.paste(s.resize((s.width * args.scale, s.height * args.scale), Image.NEAREST), (0, y))
            y += s.height * args.scale + gap
        out = Path(args.out)
        part = out.with_name(out.name + ".part")
        sheet.save(part, format="PNG")
        part.replace(out)  # atomic: a stop leaves the old picture, never half of one
    print(f"wrote {out} ({len(strips)} strips, {args.occlude}, --bundle {args.bundle})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
