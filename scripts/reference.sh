#!/usr/bin/env bash
# The reference run of docs/results.md: Fashion-MNIST, the default settings, towards 40,000 iterations.
# Resumable: run it again after any stop and it continues from runs/reference/checkpoint.pt (--resume, exact).
# One core at the lowest priority, so other work (not benchmarks) can share the machine; the log is appended to
# runs/reference.log (follow it with: tr '\r' '\n' < runs/reference.log | tail -1).
set -euo pipefail
cd "$(dirname "$0")/.."
resume=()
[[ -f runs/reference/checkpoint.pt ]] && resume=(--resume)
mkdir -p runs
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec nice -n 19 .venv/bin/coop-train --dataset fashion-mnist \
  --iterations "${ITERATIONS:-40000}" --out runs/reference --ckpt-every 500 --sample-every 1000 --log-every 50 \
  "${resume[@]}" >> runs/reference.log 2>&1
