#!/usr/bin/env bash
# Download here (where pip works) the wheels that bench/gpu.sh needs and the GPU machine's image lacks, into .whl/
# (ignored by git), for the device tool's `carry`: the peers of the benchmarks (POT, geomloss, ott-jax and its
# jaxopt, flash-sinkhorn) and test dependencies (pytrec-eval-terrier, bm25s, ruff) as Python 3.12 x86-64 wheels,
# the versions the CPU venv tests with. The embedded MiniLM package (90 MB) stays behind: its tests skip there.
# The device README's limit: 64 MiB a call with the working tree; this set is about 50 MB.
#
#   bash bench/gpu_wheels.sh            # then: run(command="bash bench/gpu.sh $OUT/gpu", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PKGS=(pot==0.9.7.post1 geomloss==0.3.1 ott-jax==0.6.0 jaxopt flash-sinkhorn==0.4.1 pytrec-eval-terrier==0.5.11
      bm25s==0.3.16 ruff==0.17.6)
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do plat+=(--platform "$p"); done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  "${PKGS[@]}"
ls -1 .whl
size=$(du -sb .whl | cut -f1)
echo "wheels: $(( size / 1048576 )) MiB in .whl/ (the carry limit is 64 MiB with the working tree)"
[ "$size" -lt $(( 60 * 1048576 )) ] || { echo "too large to carry" >&2; exit 1; }
