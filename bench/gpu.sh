#!/usr/bin/env bash
# The GPU command: on a bare H100/H200 machine with no network (torch with CUDA, nvcc, cmake, ninja,
# scikit-build-core; the peers POT, geomloss, ott-jax, flash-sinkhorn only if they are installed or carried as
# wheels, see the device tool's README), in under 10 minutes:
#   build the CUDA extension against the machine's torch, check it (the CUDA and Triton conformance tests,
#   compute-sanitizer memcheck on every CUDA path, racecheck and synccheck on Sinkhorn's), and run
#   `python -m bench.run --preset gpu`, which writes the CSV, the PNG plots and the Markdown table into the
#   output folder.
#
#   bash bench/gpu.sh [OUT]          # OUT defaults to $OUT, else bench/results/gpu-<date>
#   ALL=1 bash bench/gpu.sh [OUT]    # also the whole test suite and the per-issue GPU benchmarks
#                                    # (bench.sinkhorn_gpu, bench.codeswitch_gpu, bench.distill_step): longer
# NOT YET RUN: written by sessions without a GPU. Each stage's exit status is in $OUT/status.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-bench/results/gpu-$(date +%F)}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
status() { echo "$1 exit $2" | tee -a "$OUT/status.txt"; }
: > "$OUT/status.txt"
{ nvidia-smi; nvcc --version; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/versions.txt" 2>&1
stage build
$PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?; status build $rc; [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import fastot; fastot.show_backends()" | tee "$OUT/backends.txt"
stage tests
if [ "${ALL:-0}" = 1 ]; then sel=(python_tests); else sel=(python_tests -k "cuda or triton"); fi
$PY -m pytest "${sel[@]}" -q -x -p no:cacheprovider > "$OUT/tests.txt" 2>&1; status tests $?
tail -3 "$OUT/tests.txt"
stage compute-sanitizer
compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m bench.sinkhorn_gpu --sanitize > "$OUT/sanitizer.txt" 2>&1
status "sanitizer (sinkhorn)" $?
compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m bench.codeswitch_gpu --sanitize \
  > "$OUT/sanitizer_codeswitch.txt" 2>&1
status "sanitizer (codeswitch)" $?
for tool in racecheck synccheck; do  # the Sinkhorn kernel keeps its tile and reductions in shared memory
  compute-sanitizer --tool $tool --error-exitcode 9 $PY -m bench.sinkhorn_gpu --sanitize > "$OUT/$tool.txt" 2>&1
  status "$tool (sinkhorn)" $?
done
stage bench.run
$PY -m bench.run --preset gpu --out "$OUT" 2>&1 | tee "$OUT/bench_run.txt" | grep -v '^|'; status bench.run ${PIPESTATUS[0]}
if [ "${ALL:-0}" = 1 ]; then
  stage "per-issue benchmarks"
  $PY -m fastot.triton.aot --arch 90 > "$OUT/triton_resources.txt" 2>&1
  $PY -m bench.sinkhorn_gpu --out "$OUT/sinkhorn_gpu.csv" 2>&1 | tee "$OUT/bench.txt"
  $PY -m bench.codeswitch_gpu --out "$OUT/codeswitch_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
  $PY -m bench.distill_step --device cuda --B 64 --out "$OUT/distill_step_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
fi
stage done
