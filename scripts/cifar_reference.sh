#!/usr/bin/env bash
# The color reference run: CIFAR-10 (class folders of 32x32 JPEGs, or pass cifar10:PATH for the python
# tarball) with `--preset cifar10`, one thread at low priority so the machine stays usable, checkpoints every
# 500 iterations, 20,000 of them (ITERATIONS=N to change). Resumable: run it again after any stop and it
# continues from runs/cifar10/checkpoint.pt (--resume, exact). Follow it with: tr '\r' '\n' < runs/cifar10.log | tail -1
#   scripts/cifar_reference.sh folder:/data/cifar10/train
# Then: scripts/ship_reference.sh runs/cifar10/checkpoint.pt cifar10 (int8, pinned in models/cifar10.sha256)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/cifar_reference.sh folder:CIFAR10/train | cifar10:cifar-10-python.tar.gz}
run=${RUN:-runs/cifar10}
mkdir -p "$(dirname "$run")"
resume=()
[[ -f $run/checkpoint.pt ]] && resume=(--resume)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nice -n "${NICE:-10}" .venv/bin/coop-train --preset cifar10 \
  --dataset "$data" --iterations "${ITERATIONS:-20000}" --out "$run" --ckpt-every 500 --sample-every 1000 --log-every 50 --no-export \
  "${resume[@]}" >> "$run.log" 2>&1
echo "color reference run at $run: scripts/ship_reference.sh $run/checkpoint.pt cifar10 ships it"
