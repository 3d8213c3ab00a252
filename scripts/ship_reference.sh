#!/usr/bin/env bash
# Replaces the shipped reference bundle (models/reference) with an export of a coop-train checkpoint, int8
# weights (trainer/pack.py; 4.6 MB for the 28 px nets), and re-pins its manifest's sha256 in
# models/reference.sha256, which contract.bundle.read_bundle checks whenever the shipped bundle is loaded.
#   scripts/ship_reference.sh runs/reference/ckpt-12000.pt
# Then measure it (models/README.md) and commit models/ together.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: scripts/ship_reference.sh RUN_DIR/CHECKPOINT.pt}
[[ -f "$ckpt" ]] || { echo "ship_reference.sh: $ckpt is not a file: give a coop-train checkpoint" >&2; exit 2; }
.venv/bin/coop-export "$ckpt" models/reference --weights "${WEIGHTS:-int8}"
(cd models && sha256sum reference/manifest.json > .reference.sha256.tmp && mv .reference.sha256.tmp reference.sha256)
cat models/reference.sha256
