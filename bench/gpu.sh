#!/usr/bin/env bash
# The GPU check: the CUDA tests and the CUDA speed tables, written to OUT_DIR/gpu.txt (and printed).
#
#   bash bench/gpu.sh [OUT_DIR]        # OUT_DIR defaults to $OUT (the device tool's) or ./gpu-results
#
# Made for the GPU machines this project is lent (Python 3.12, torch 2.x+cu13x, onnx, a CPU-only onnxruntime,
# grpcio, protobuf, no package registry): onnxruntime-gpu is installed with --no-deps from a wheel next to the
# repository (onnxruntime_gpu-*.whl, or its parts onnxruntime_gpu-*.whl.part-* joined here) into a folder of
# its own (pip --target) put first on PYTHONPATH, so that it shadows the CPU build and keeps the machine's
# torch (a venv would not: the machine's python3 is itself a venv, and --system-site-packages reaches the
# base interpreter's packages, not torch). The repository is imported from its tree (PYTHONPATH), not
# pip-installed: nothing is downloaded. Without CUDA it says so in
# one line and exits 3. Steps (each reports and the script goes on if one fails):
#   1. the card, the driver, torch's and ONNX Runtime's view of CUDA
#   2. pytest -m gpu tests/system/test_gpu.py (trainer on cuda fp32/bf16, ORT CUDA + IO binding vs CPU, the service)
#   3. bench/training.py --device cuda: the TPAMI-like setting and 4x its chains, fp32 and bf16
#   4. bench/synthesis.py --device cuda: ORT CUDA with IO binding vs PyTorch eager CUDA, counts 1/64/512
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
exec > >(tee "$out/gpu.txt") 2>&1
echo "# coopnets GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

echo "## 1. the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
for part in onnxruntime_gpu-*.whl.part-aa; do
  [ -e "$part" ] || break
  whl=${part%.part-aa}
  [ -e "$whl" ] || cat "$whl".part-* > "$whl"
done
whl=$(ls onnxruntime_gpu-*.whl 2>/dev/null | head -n 1)
if [ -n "$whl" ]; then
  site=${GPU_SITE:-/tmp/coopnets-gpu-site}
  [ -d "$site/onnxruntime" ] || "$py" -m pip install -q --no-deps --no-index --no-compile --target "$site" "$whl"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "onnxruntime-gpu: installed $whl into $site (--no-deps --target, first on PYTHONPATH: shadows the CPU build)"
else
  echo "onnxruntime-gpu: no wheel next to the repository; using the installed onnxruntime"
fi
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
"$py" - <<'PY'
import sys
try:
    import torch
    print(f"torch {torch.__version__}: cuda available {torch.cuda.is_available()}",
          f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
except ImportError as e:
    print(f"torch: not importable ({e})")
try:
    import onnxruntime as ort
except ImportError as e:
    print(f"onnxruntime: not importable ({e})")
    sys.exit(3)
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception as e:
        print(f"onnxruntime.preload_dlls failed: {e}")
print(f"onnxruntime {ort.__version__}: providers {ort.get_available_providers()}")
ok = "CUDAExecutionProvider" in ort.get_available_providers()
try:
    import torch
    ok = ok and torch.cuda.is_available()
except ImportError:
    ok = False
sys.exit(0 if ok else 3)
PY
if [ $? -ne 0 ]; then
  echo "CUDA is missing: no CUDA device for torch, or no CUDA provider in onnxruntime; nothing was measured"
  exit 3
fi

echo "## 2. the CUDA tests"
"$py" -m pytest -q -m gpu tests/system/test_gpu.py -rs -p no:cacheprovider || echo "(the CUDA tests failed: see above)"

echo "## 3. training on CUDA"
"$py" bench/training.py --device cuda --settings tpami,tpami4x --variants bf16 --repeats 5 \
  || echo "(bench/training.py failed: see above)"

echo "## 4. synthesis on CUDA"
"$py" bench/synthesis.py --device cuda --counts 1,64,512 --no-compile --repeats 5 \
  || echo "(bench/synthesis.py failed: see above)"
echo "# written to $out/gpu.txt"
