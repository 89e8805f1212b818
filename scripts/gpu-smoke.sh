#!/usr/bin/env bash
# The first ten minutes on a GPU host: what is installed, the real-TensorRT tests, a cold
# `clearmark engines build` timed, GPU engines against the CPU's fp32 (`clearmark engines
# smoke`: engines at production shapes, process_image, eval-real's statuses), `clearmark
# clean --workers 2` on the examples, and `clearmark bench` (engines, then the pipeline
# with the stage that bounds it). Stops at the first failure; 600 s in all.
# A step that needs what this host lacks (TensorRT, a CUDA GPU) is one `skip` line.
#   bash scripts/gpu-smoke.sh           (PYTHON=... for another interpreter than .venv's)
#   bash scripts/gpu-smoke.sh --quick   (seconds on a CPU: no build, clean or bench)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SMOKE_TIMED:-}" ] || SMOKE_TIMED=1 exec timeout 600 bash "$0" "$@"
PY="${PYTHON:-.venv/bin/python}"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
cm() { "$PY" -m clearmark "$@"; }
step() { echo; echo "== $* (${SECONDS} s)"; }
skip() { echo "skip $*"; }

step "installed"
"$PY" --version
cm engines info
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
HAVE_TRT=0 HAVE_CUDA=0
cm engines smoke --have tensorrt && HAVE_TRT=1
cm engines smoke --have cuda && HAVE_CUDA=1

step "real-TensorRT tests"
if [ $HAVE_TRT = 1 ]; then
    "$PY" -m pytest -q -x tests/test_engines.py -k tensorrt
else
    skip "the real-TensorRT tests: no TensorRT here"
fi

step "cold engines build"
if [ $QUICK = 1 ]; then
    skip "cold engines build: --quick"
elif [ $HAVE_TRT = 1 ] || [ $HAVE_CUDA = 1 ]; then
    cold=$(mktemp -d)
    start=$SECONDS
    CLEARMARK_ENGINE_DIR="$cold" cm engines build
    echo "cold engines build: $((SECONDS - start)) s"
    rm -rf "$cold"
    cm engines build  # the engine dir the next steps load from
else
    skip "cold engines build: no GPU here (the CPU's ONNX export is not what this checks)"
fi

step "GPU engines against the CPU's fp32"
if [ $QUICK = 1 ]; then
    cm engines smoke --quick --images 1 --size 512 --eval-photos 2
else
    cm engines smoke
fi

if [ $QUICK = 1 ]; then
    skip "clean --workers 2 and bench: --quick"
    exit 0
fi

step "clean --workers 2 on the examples"
out=$(mktemp -d)
CLEARMARK_DATA_DIR="$out/data" cm clean examples/watermarked --out "$out/cleaned" --workers 2
rm -rf "$out"

step "bench: engines alone, then the pipeline"
cm bench --batch 2 --size 640 --seconds 2
cm bench --pipeline --images 4 --backend auto
echo
echo "gpu-smoke: every step passed or was skipped (${SECONDS} s)"
