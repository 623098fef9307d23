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


def test_codeswitch_cpu_benchmark_runs(tmp_path):
    import fastot  # noqa: PLC0415

    out = tmp_path / "cs.csv"
    res = subprocess.run([sys.executable, "-m", "bench.codeswitch_cpu", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["contender"]: r for r in csv.DictReader(out.open())}
    expected = {"text pipeline (published)", "fastot torch (reference)"}
    if "cpp" in fastot.available_backends("codeswitch"):
        expected |= {"fastot cpp", "fastot cpp, 1 thread"}
    assert set(rows) == expected
    for name, r in rows.items():
        assert float(r["median_ms"]) > 0 and float(r["input_tokens_per_s"]) > 0 and int(r["runs"]) >= 1
        assert 0 < float(r["switch_ratio"]) < 1
        assert r["equal_to_reference"] == ("n/a" if name.startswith("text") else "True"), name
        assert r["torch"] and r["fastot_sha"] and r["cpu"]


def test_codeswitch_gpu_benchmark_code_path_runs_on_cpu(tmp_path):
    """The GPU benchmark's code (synthetic batch, every backend vs the reference, training-step share) on CPU."""
    out = tmp_path / "g.csv"
    res = subprocess.run([sys.executable, "-m", "bench.codeswitch_gpu", "--device", "cpu", "--B", "8", "--L", "40",
                          "--step-B", "2", "--step-L", "16", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert {"torch"} <= {r["backend"] for r in rows}
    for r in rows:
        assert r["equal_to_reference"] == "True" and float(r["tokens_per_s"]) > 0
        assert 0 < float(r["share_of_train_step"])


def test_distill_step_benchmark_runs(tmp_path):
    """The training-step benchmark (tiny model): every contender timed, peak memory measured, loss agrees."""
    out = tmp_path / "d.csv"
    res = subprocess.run([sys.executable, "-m", "bench.distill_step", "--model", "tiny", "--B", "4", "--rounds", "1",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["contender"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"step (fastot loss)", "step (naive loss)", "loss fastot", "loss naive"}
    for r in rows.values():
        assert float(r["median_ms"]) > 0 and float(r["loss_share_of_step"]) > 0
        assert float(r["loss_abs_diff"]) < 1e-4 and r["torch"] and r["fastot_sha"]
    assert int(rows["loss naive"]["loss_peak_bytes"]) > 0  # the naive loss keeps [B,N,M] tensors per iteration
