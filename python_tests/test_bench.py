"""The benchmark commands run (tiny sizes). No timing is asserted anywhere in the suite."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sinkhorn_cpu_benchmark_runs(tmp_path):
    out = tmp_path / "b.csv"
    res = subprocess.run([sys.executable, "-m", "bench.sinkhorn_cpu", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    names = {r["contender"] for r in rows}
    assert "fastot torch (reference, eager)" in names
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["plan_max_abs_err_vs_fp64"]) < 1e-4
        assert r["torch"] and r["fastot_sha"] and r["cpu"]
