#!/usr/bin/env bash
# bench/gpu.sh here, without a GPU, to catch script errors before a device call spends its 15 minutes: stand-ins
# for nvidia-smi, nvcc (the real one when present) and compute-sanitizer (runs the command it wraps), the
# venv's python, short stage limits. Stages that need a GPU fail for that reason (their exit codes are in
# OUT/status.txt); the script must still reach every stage and write every file.
#
#   bash bench/gpu_dryrun.sh [OUT]      # OUT defaults to /tmp/fastot-gpu-dryrun
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fastot-gpu-dryrun}
rm -rf "$OUT" && mkdir -p "$OUT"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
printf '#!/bin/sh\necho "nvidia-smi stand-in (dry run, no GPU)"\n' > "$bin/nvidia-smi"
real_nvcc=$(command -v nvcc || true)
[ -n "$real_nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || real_nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$real_nvcc" ]; then printf '#!/bin/sh\nexec %s "$@"\n' "$real_nvcc" > "$bin/nvcc"
else printf '#!/bin/sh\necho "nvcc stand-in"\n' > "$bin/nvcc"; fi
cat > "$bin/compute-sanitizer" <<'SAN'
#!/bin/sh
# compute-sanitizer stand-in: drop its options, run the program
while [ $# -gt 0 ]; do case "$1" in --tool|--error-exitcode) shift 2 ;; --*) shift ;; *) break ;; esac; done
exec "$@"
SAN
chmod +x "$bin"/*
PATH="$bin:$PATH" PYTHON="${PYTHON:-$PWD/.venv/bin/python}" GPU_REQUIRE=cpp,triton \
  T_BUILD="${T_BUILD:-300}" T_TESTS="${T_TESTS:-60}" T_SAN="${T_SAN:-20}" T_BENCH="${T_BENCH:-60}" \
  bash bench/gpu.sh "$OUT"
echo "--- $OUT/status.txt"; cat "$OUT/status.txt"
for f in versions.txt build.log backends.txt tests.txt sanitizer.txt sanitizer_codeswitch.txt racecheck.txt \
         synccheck.txt bench_run.txt; do
  [ -s "$OUT/$f" ] || { echo "dry run: $OUT/$f is missing or empty" >&2; exit 1; }
done
n=$(wc -l < "$OUT/status.txt")
[ "$n" -ge 8 ] || { echo "dry run: only $n stages reported" >&2; exit 1; }
echo "dry run: every stage ran and wrote its files"
