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
# First light in one device call (device tool): here, `bash bench/gpu_wheels.sh` once (the peers and test
# dependencies the GPU image lacks, into .whl/), then
#   run(command="bash bench/gpu.sh $OUT/gpu", carry=[".whl"], timeout_s=600)
# Every stage has a time limit (T_BUILD, T_TESTS, T_SAN, T_BENCH seconds) so the whole run ends in about 9 minutes
# with its results under OUT even when a stage hangs; a stage cut by its limit reports exit 124.
# NOT YET RUN on a GPU: written by sessions without one; `bash bench/gpu_dryrun.sh` runs it here with stand-ins for
# nvidia-smi, nvcc and compute-sanitizer to catch script errors. Each stage's exit status is in $OUT/status.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-bench/results/gpu-$(date +%F)}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T_BUILD=${T_BUILD:-200} T_TESTS=${T_TESTS:-120} T_SAN=${T_SAN:-25} T_BENCH=${T_BENCH:-140}
REQUIRE=${GPU_REQUIRE:-cpp,cuda,triton}  # the dry run (no GPU here) requires cpp,triton
start=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
status() { echo "$1 exit $2 ($(( $(date +%s) - start )) s)" | tee -a "$OUT/status.txt"; }
: > "$OUT/status.txt"
if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels (bench/gpu_wheels.sh): the peers, pytrec-eval, bm25s
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fastot-site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1
  status wheels $?
  export PYTHONPATH=/tmp/fastot-site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi; nvcc --version; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
  > "$OUT/versions.txt" 2>&1
stage build
# one architecture (H100/H200 are sm_90) keeps the build inside its limit
CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90a}" timeout "$T_BUILD" \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?; status build $rc; [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
# FASTOT_REQUIRE: an extension built without its CUDA kernels, or Triton missing, fails here rather than later
FASTOT_REQUIRE=$REQUIRE $PY -c "import fastot; fastot.show_backends()" > "$OUT/backends.txt" 2>&1
status backends $?; cat "$OUT/backends.txt"
stage tests
if [ "${ALL:-0}" = 1 ]; then sel=(python_tests); T_TESTS=${T_TESTS_ALL:-1800}; else sel=(python_tests -k "cuda or triton"); fi
FASTOT_REQUIRE=$REQUIRE timeout "$T_TESTS" $PY -m pytest "${sel[@]}" -q -x -p no:cacheprovider \
  > "$OUT/tests.txt" 2>&1
status tests $?
tail -3 "$OUT/tests.txt"
stage compute-sanitizer
san() {  # tool, output file, module
  timeout "$T_SAN" compute-sanitizer --tool "$1" --error-exitcode 9 $PY -m "$3" --sanitize > "$OUT/$2" 2>&1
  status "$1 ($3)" $?
}
san memcheck sanitizer.txt bench.sinkhorn_gpu
san memcheck sanitizer_codeswitch.txt bench.codeswitch_gpu
for tool in racecheck synccheck; do  # the Sinkhorn kernel keeps its tile and reductions in shared memory
  san $tool $tool.txt bench.sinkhorn_gpu
done
stage bench.run
timeout "$T_BENCH" $PY -m bench.run --preset gpu --budget-s $(( T_BENCH - 40 )) --out "$OUT" 2>&1 \
  | tee "$OUT/bench_run.txt" | grep -v '^|'; status bench.run ${PIPESTATUS[0]}
if [ "${ALL:-0}" = 1 ]; then
  stage "per-issue benchmarks"
  $PY -m fastot.triton.aot --arch 90 > "$OUT/triton_resources.txt" 2>&1
  $PY -m bench.sinkhorn_gpu --out "$OUT/sinkhorn_gpu.csv" 2>&1 | tee "$OUT/bench.txt"
  $PY -m bench.codeswitch_gpu --out "$OUT/codeswitch_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
  $PY -m bench.distill_step --device cuda --B 64 --out "$OUT/distill_step_gpu.csv" 2>&1 | tee -a "$OUT/bench.txt"
fi
stage done
