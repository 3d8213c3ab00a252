#!/usr/bin/env bash
# The main job, end to end on the built-in default data (run by `make demo` after set-up):
# a short default training run on Fashion-MNIST into runs/demo, the ONNX bundle in runs/demo/bundle, and sample
# grids (generator drafts | descriptor-revised) in runs/demo/samples.
#   DEMO_ITERATIONS=N   override the number of iterations (default: coop-train's default)
#   DEMO_RUN=DIR        run directory (default runs/demo; a previous demo run there is replaced)
#   SERVE=1             at the end, keep coop-serve up with the page at http://127.0.0.1:$PAGE_PORT/ until Ctrl-C
#   PAGE_PORT=N         the page's HTTP port with SERVE=1 (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
KEEP_SERVING="${SERVE:-}"  # read now: $SERVE names the serving folder below
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

# ---- serving (owned by the serving engineer): the bundle through gRPC -------------------------------------------
# coop-serve on a free loopback port, wait for health SERVING, synthesize and complete through gRPC, stop it.
SERVE="$RUN/serve"
mkdir -p "$SERVE"
rm -f "$SERVE/port.json"
"$BIN/coop-serve" --bundle "$RUN/bundle" --port 0 --port-file "$SERVE/port.json" --metrics-port 0 \
  --http-port 0 >"$SERVE/stdout.log" 2>"$SERVE/server.log" &
SERVER_PID=$!
trap 'kill -TERM "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [[ -s "$SERVE/port.json" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "coop-serve failed:"; cat "$SERVE/server.log"; exit 1; }
  sleep 0.1
done
ADDR="127.0.0.1:$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$SERVE/port.json")"
"$BIN/coop-client" health --server "$ADDR" --wait 120 >/dev/null
echo
echo "coop-serve is SERVING on $ADDR ($(grep -o 'sessions on [a-z]*' "$SERVE/server.log" | head -1))"
"$BIN/coop-client" synth --server "$ADDR" --count 16 --seed 0 --out "$RUN/served"
# four held-out Fashion-MNIST test images (never trained on) as PNGs to occlude and complete
"$BIN/python" - "${FASHION_DIR:-/usr/share/datasets/fashion-mnist}/t10k-images-idx3-ubyte.gz" "$RUN/completion_inputs" <<'PY'
import gzip, sys
from pathlib import Path
import numpy as np
from PIL import Image
raw = gzip.open(sys.argv[1]).read()
images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for i in range(4):
    Image.fromarray(images[i]).save(out / f"test{i}.png")
PY
"$BIN/coop-complete" "$RUN"/completion_inputs/test*.png --occlude center:14 --server "$ADDR" --out "$RUN/completed"
# the page at / of the HTTP port answers, and its API names the bundle (serving/rest.py)
"$BIN/python" - "$SERVE/port.json" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{json.load(open(sys.argv[1]))['http_port']}"
assert b"coopnets" in urllib.request.urlopen(base + "/", timeout=30).read()
info = json.load(urllib.request.urlopen(base + "/api/info", timeout=30))
print(f"the page answers at {base}/ (bundle {info['name']}, {len(info['examples'])} example images)")
PY
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
trap - EXIT
echo "served through gRPC:"
echo "  synthesized          $RUN/served/grid.png, $RUN/served/seed_*.png"
echo "  completed            $RUN/completed/test*_strip.png (original | occluded | recovered)"
echo "  server log           $SERVE/server.log"

PAGE_PORT="${PAGE_PORT:-8000}"
echo
echo "try the model in a browser (Sample, Complete, Energy): start the server with its page,"
echo "  $BIN/coop-serve --bundle $RUN/bundle --http-port $PAGE_PORT"
echo "then open http://127.0.0.1:$PAGE_PORT/ (or run SERVE=1 make demo, which ends by doing so)"
if [[ -n "$KEEP_SERVING" && "$KEEP_SERVING" != 0 ]]; then
  echo
  echo "SERVE=$KEEP_SERVING: serving $RUN/bundle, the page at http://127.0.0.1:$PAGE_PORT/ (Ctrl-C stops it)"
  exec "$BIN/coop-serve" --bundle "$RUN/bundle" --http-port "$PAGE_PORT"
fi
