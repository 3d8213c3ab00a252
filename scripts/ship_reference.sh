#!/usr/bin/env bash
# Replaces a shipped bundle (models/NAME: reference = Fashion-MNIST, cifar10 = color) with an export of a
# coop-train checkpoint, int8 weights (trainer/pack.py; 4.6 MB for the 28 px nets), and re-pins its manifest's
# sha256 in models/NAME.sha256, which contract.bundle.read_bundle checks whenever the shipped bundle is loaded.
#   scripts/ship_reference.sh runs/reference/checkpoint.pt            # NAME defaults to reference
#   scripts/ship_reference.sh runs/cifar10/checkpoint.pt cifar10
# Then measure it (models/README.md) and commit models/ together.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: scripts/ship_reference.sh RUN_DIR/CHECKPOINT.pt [reference|cifar10]}
name=${2:-reference}
[[ -f "$ckpt" ]] || { echo "ship_reference.sh: $ckpt is not a file: give a coop-train checkpoint" >&2; exit 2; }
[[ $name == reference || $name == cifar10 ]] || { echo "ship_reference.sh: NAME is reference or cifar10, not $name" >&2; exit 2; }
# The color bundle averages 16 latent chains per completed image, not the default 4: on CIFAR-10 the classical
# fills are close and the posterior mean of more chains pulls ahead of them, at 4x the latent cost
# (docs/results.md, "Averaged chains"); on Fashion-MNIST 4 already lead by over 3 dB.
restarts=()
[[ $name == cifar10 ]] && restarts=(--restarts 16)
.venv/bin/coop-export "$ckpt" "models/$name" --weights "${WEIGHTS:-int8}" "${restarts[@]}"
(cd models && sha256sum "$name/manifest.json" > ".$name.sha256.tmp" && mv ".$name.sha256.tmp" "$name.sha256")
cat "models/$name.sha256"
