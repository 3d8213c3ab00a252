#!/usr/bin/env bash
# The main job, end to end on the built-in default data (run by `make demo` after set-up):
# a short default training run on Fashion-MNIST into runs/demo, the ONNX bundle in runs/demo/bundle, and sample
# grids (generator drafts | descriptor-revised) in runs/demo/samples.
#   DEMO_ITERATIONS=N   override the number of iterations (default: coop-train's default)
#   DEMO_RUN=DIR        run directory (default runs/demo; a previous demo run there is replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
RUN="${DEMO_RUN:-runs/demo}"
ARGS=(--dataset fashion-mnist --out "$RUN")
if [[ -n "${DEMO_ITERATIONS:-}" ]]; then ARGS+=(--iterations "$DEMO_ITERATIONS"); fi

if [[ -e "$RUN" ]]; then
  echo "replacing the previous demo run in $RUN"
  rm -rf -- "$RUN"
fi
start=$(date +%s)
"$BIN/coop-train" "${ARGS[@]}"
echo
echo "demo finished in $(( $(date +%s) - start )) s:"
echo "  resolved config      $RUN/config.json"
echo "  checkpoint           $RUN/checkpoint.pt   (coop-export $RUN/checkpoint.pt OUT_DIR re-exports it)"
echo "  ONNX model bundle    $RUN/bundle/manifest.json"
echo "  sample grids         $RUN/samples/final_eval.png (exported model: eval-mode generator + Langevin)"
echo "                       $RUN/samples/iter_*.png (drafts | revised during training)"
echo "  scalars              $RUN/metrics.jsonl, TensorBoard: $BIN/tensorboard --logdir $RUN/tb"
