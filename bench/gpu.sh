#!/usr/bin/env bash
# One command for a bare H100/H200 machine (torch with CUDA, nvcc, cmake, ninja, scikit-build-core; no network):
# build the CUDA extension against the machine's torch, run the test suite there (CUDA tests included),
# compute-sanitizer on the CUDA paths, and the GPU benchmark. Everything lands in $OUT (default
# bench/results/gpu-<date>). Python packages the machine lacks (pytest, pot, transformers, the MiniLM package)
# travel as wheels: see the device tool's README. NOT YET RUN: written by a session without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-$(date +%F)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{ nvidia-smi; nvcc --version; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/versions.txt" 2>&1
echo "== build" && $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import fastot; fastot.show_backends()" | tee "$OUT/backends.txt"
echo "== tests" && $PY -m pytest python_tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt" | tail -5
echo "== triton kernels: registers and spills" && $PY -m fastot.triton.aot --arch 90 > "$OUT/triton_resources.txt" 2>&1
echo "== compute-sanitizer" && compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m bench.sinkhorn_gpu --sanitize \
  > "$OUT/sanitizer.txt" 2>&1; echo "sanitizer exit $?" | tee -a "$OUT/sanitizer.txt"
compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m bench.codeswitch_gpu --sanitize \
  > "$OUT/sanitizer_codeswitch.txt" 2>&1; echo "sanitizer (codeswitch) exit $?" | tee -a "$OUT/sanitizer_codeswitch.txt"
echo "== benchmark" && $PY -m bench.sinkhorn_gpu --out "$OUT/sinkhorn_gpu.csv" 2>&1 | tee "$OUT/bench.txt"
$PY -m bench.codeswitch_gpu --out "$OUT/codeswitch_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
$PY -m bench.distill_step --device cuda --B 64 --out "$OUT/distill_step_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
