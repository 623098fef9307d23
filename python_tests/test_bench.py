"""The benchmark commands run (tiny sizes). No timing is asserted anywhere in the suite."""

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("module,cols", [("bench.teacher_grad", ("both_bwd_ms", "frozen_bwd_ms", "bwd_speedup")),
                                         ("bench.status_overhead", ("sinkhorn_ms", "status_clean_ms", "full_share"))])
def test_issue21_benchmarks_run(tmp_path, module, cols):
    out = tmp_path / "b.csv"
    res = subprocess.run([sys.executable, "-m", module, "--rounds", "1", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(float(r[c]) > 0 for r in rows for c in cols)
    res = subprocess.run([sys.executable, "-m", module, "--rounds", "0", "--out", str(tmp_path / "no.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "--rounds" in res.stderr and not (tmp_path / "no.csv").exists()


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


def test_varlen_benchmark_runs(tmp_path):
    """Packed against padded input (tiny model): every row timed, the packed and padded losses agree."""
    res = subprocess.run([sys.executable, "-m", "bench.varlen", "--model", "tiny", "--B", "4", "--batches", "1",
                          "--rounds", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (csv_path,) = tmp_path.glob("*-varlen.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["padding"] for r in rows} == {"longest", "max_length"}
    for r in rows:
        assert float(r["ms_padded"]) > 0 and float(r["ms_packed"]) > 0 and float(r["ms_pack_packed"]) > 0
        assert float(r["loss_diff"]) < 1e-6 and 0 <= float(r["pad_share"]) < 1
        assert float(r["mb_packed"]) <= float(r["mb_padded"])
    assert (tmp_path / csv_path.name.replace(".csv", ".md")).exists()


def test_distill_domains_benchmark_runs(tmp_path):
    """Distillation on news, dense retrieval before/after on every domain (tiny model, the fake shared data)."""
    from test_domains import fake_root

    root = fake_root(tmp_path, lang="swa")
    res = subprocess.run([sys.executable, "-m", "bench.distill_domains", "--langs", "swa", "--data", root, "--model",
                          "tiny", "--max-train-pairs", "40", "--runs", str(tmp_path / "runs"), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (csv_path,) = (tmp_path / "out").glob("*-distill-domains.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["domain"] for r in rows] == ["news", "tico-pubmed", "tico-wikipedia", "tico-dialogue", "flores-wikinews"]
    assert [r["trained_on"] for r in rows] == ["True"] + ["False"] * 4 and rows[0]["distill_pairs"] == "40"
    for r in rows:
        assert 0 <= float(r["before_mrr@10"]) <= 1 and 0 <= float(r["after_mrr@10"]) <= 1
    assert "| swa | news (trained on) |" in csv_path.with_suffix(".md").read_text()


def test_rerank_plateau_benchmark_runs(tmp_path):
    """Loss curves, the lexical-cue diagnostic and paired tests (tiny model, the fake shared data)."""
    from test_domains import fake_root

    from fastot.train.models import load_encoder, load_tokenizer

    root = fake_root(tmp_path, lang="swa")
    load_encoder("tiny", seed=5).save_pretrained(tmp_path / "student")  # stands in for a distilled student
    load_tokenizer("tiny").save_pretrained(tmp_path / "student")
    cmd = [sys.executable, "-m", "bench.rerank_plateau", "--data", root, "--model", "tiny", "--steps", "2",
           "--queries", "4", "--max-train-queries", "16", "--runs", str(tmp_path / "runs"), "--out",
           str(tmp_path / "out")]
    bad = subprocess.run(cmd + ["--configs", "p0,student p0.5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--student: the 'student ...' configs need" in bad.stderr
    assert not (tmp_path / "out").exists()
    res = subprocess.run(cmd + ["--configs", "p0,p0.5,p1,student p0.5", "--student", str(tmp_path / "student"),
                                "--tag", "init"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (csv_path,) = (tmp_path / "out").glob("*-init.csv")
    rows = {r["run"]: r for r in csv.DictReader(csv_path.open())}
    assert set(rows) == {"p0", "p0.5", "p1", "student p0.5"} and float(rows["p0.5"]["diff_vs_p0.5"]) == 0.0
    assert [rows[k]["init"] for k in ("p0.5", "student p0.5")] == ["minilm", "student"]
    assert rows["p0.5"]["diff_vs_minilm_init"] == "" and 0 < float(rows["student p0.5"]["p_vs_minilm_init"]) <= 1
    cfg = json.loads((tmp_path / "runs" / "student-p0.5" / "config.json").read_text())
    assert cfg["model"] == str(tmp_path / "student") and cfg["p"] == 0.5
    cue = json.loads(next((tmp_path / "out").glob("*-cue.json")).read_text())["cue"]
    assert [c["p"] for c in cue] == [0.0, 0.25, 0.5, 0.75, 1.0] and cue[0]["groups"] == 16
    curves = list(csv.DictReader(next((tmp_path / "out").glob("*-curves.csv")).open()))
    assert len(curves) == 4 * 2


def test_rerank_step_benchmark_runs(tmp_path):
    """Padding to max_length, to the longest row, or length-sorted chunks (tiny model, the fake shared data):
    all timed, each feeding the model no more tokens than the one before, the logits the same."""
    from test_domains import fake_root

    root = fake_root(tmp_path, lang="swa")
    out = tmp_path / "step.csv"
    res = subprocess.run([sys.executable, "-m", "bench.rerank_step", "--data", root, "--model", "tiny", "--rounds",
                          "2", "--max-lengths", "16,64", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    chunked = "longest, 4 length-sorted chunks"
    assert [(r["max_length"], r["padding"]) for r in rows] == [
        (L, pad) for L in ("16", "64") for pad in ("max_length", "longest", chunked)]
    for full, short, parts in (rows[0:3], rows[3:6]):
        assert float(full["median_width"]) == float(full["max_length"])
        assert float(short["median_width"]) <= float(full["median_width"])
        assert float(parts["median_tokens"]) <= float(short["median_tokens"]) <= float(full["median_tokens"])
        assert float(short["median_ms"]) > 0 and float(full["speedup_vs_max_length"]) == 1.0
        assert float(short["max_abs_logit_diff"]) < 1e-4
    assert float(rows[4]["median_width"]) < 64 and float(rows[5]["median_tokens"]) < float(rows[4]["median_tokens"])
    stats = list(csv.DictReader((tmp_path / "step-lengths.csv").open()))
    assert [(r["max_length"], r["p"]) for r in stats] == [("16", "0.0"), ("16", "0.5"), ("64", "0.0"), ("64", "0.5")]
    for r in stats:
        assert float(r["mean_row"]) <= float(r["median_longest_row"]) <= int(r["max_length"])
        assert 0 <= float(r["share_at_cap"]) <= 1 and int(r["batches"]) >= 2


# ------------------------------------------------------------------------------------- python -m bench.run (issue 8)

PEERS = {"POT ot.batch log_sinkhorn", "geomloss tensorized", "ott-jax (jit, vmap)"}


def test_bench_run_quick_writes_every_contender_csv_plots_and_markdown(tmp_path):
    """The one command at tiny size: every section, every contender a row (peers ok or missing with a reason),
    fastot agrees with the float64 reference, ratios are relative to fastot's best, PNGs and Markdown written,
    and bench/RESULTS.md is left alone when --out is given."""
    import fastot  # noqa: PLC0415

    results_md = ROOT / "bench" / "RESULTS.md"
    before = results_md.read_bytes()
    res = subprocess.run([sys.executable, "-m", "bench.run", "--preset", "quick", "--iters", "60", "--budget-s", "1e9",
                          "--cap-s", "1e9", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert results_md.read_bytes() == before
    (csv_path,) = tmp_path.glob("*-quick.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["section"] for r in rows} == {"sinkhorn", "embeddings", "codeswitch"}
    assert all(r["fastot_sha"] and r["cpu"] and r["v_torch"] and r["date"] for r in rows)
    for section in ("sinkhorn", "embeddings"):
        sel = [r for r in rows if r["section"] == section]
        names = {r["contender"] for r in sel}
        assert "torch reference (eager)" in names and (PEERS - {"POT ot.batch log_sinkhorn"}) <= names
        if section == "sinkhorn":
            assert PEERS <= names and "torch reference (torch.compile)" in names
        for r in sel:
            assert r["status"] in ("ok", "missing", "skipped", "error", "n/a"), r
            assert r["status"] != "error", r
            if r["status"] in ("missing", "skipped"):
                assert r["reason"], r
        ours = [r for r in sel if r["family"] == "fastot" and r["status"] == "ok"]
        if "cpp" in fastot.available_backends("sinkhorn"):
            assert {r["mode"] for r in ours} == {"fwd", "bwd", "fwd+bwd"}
        for r in ours + [r for r in sel if r["contender"] == "torch reference (eager)"]:
            assert float(r["median_ms"]) > 0 and float(r["potential_err_vs_fp64"]) < 1e-4, r
        for mode in ("fwd", "fwd+bwd"):
            x = [float(r["speedup_of_best_fastot"]) for r in sel if r["mode"] == mode and r["status"] == "ok"
                 and r["family"] == "fastot"]
            if x:
                assert min(x) == 1.0
    cs = {r["contender"]: r for r in rows if r["section"] == "codeswitch"}
    assert "text pipeline (published)" in cs and "vectorised PyTorch (fastot torch reference)" in cs
    for name, r in cs.items():
        assert float(r["tokens_per_s"]) > 0
        assert r["equal_to_reference"] == "True" or name.startswith("text"), r
    assert len(list(tmp_path.glob("*-quick-time.png"))) == 1 and len(list(tmp_path.glob("*-quick-speedup.png"))) == 1
    md = next(tmp_path.glob("*-quick.md")).read_text()
    assert "| fastot" in md and "Command: `python -m bench.run --preset quick" in md
    from bench import run  # noqa: PLC0415

    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert run.main(["--replot", str(csv_path)]) == 0  # redraws from the CSV alone, RESULTS.md untouched
    assert len(list(tmp_path.glob("*.png"))) == 2 and results_md.read_bytes() == before
    assert next(tmp_path.glob("*-quick.md")).read_text().splitlines()[:12] == md.splitlines()[:12]


def test_bench_run_failing_contender_is_a_row_and_budget_skips(monkeypatch):
    """A contender that raises is an error row (the run goes on); a call predicted over the cap is skipped."""
    import torch  # noqa: PLC0415

    from bench import peers, run  # noqa: PLC0415

    def boom():
        raise RuntimeError("no kernel image")

    calls = {"n": 0}

    def fails_later():  # succeeds in the warm-up and the memory call, then fails in a timing round
        calls["n"] += 1
        if calls["n"] > 2:
            raise MemoryError("out of memory")
        return torch.zeros(1, 8), torch.zeros(1, 8)

    def with_broken(C, eps, iters, compile_reference=True):
        calls["n"] = 0
        return [peers.Contender("broken peer", "peer", boom, boom, lambda: None),
                peers.Contender("flaky peer", "peer", fails_later, boom, lambda: None),
                peers.fastot_cost(C, eps, iters, "torch", "torch reference (eager)", "reference"),
                peers.Missing("torch reference (torch.compile)", "reference", "left out")]

    monkeypatch.setattr(peers, "cost_contenders", with_broken)
    p = dict(run.PRESETS["quick"], N=[8, 16], iters=5)
    budget = run.Budget(cap_s=1e-9, budget_s=float("inf"))
    budget.section("sinkhorn", ["sinkhorn"])
    rows = run.sinkhorn_section(p, torch.device("cpu"), budget, 1, lambda msg: None, False)
    broken = [r for r in rows if r["contender"] == "broken peer"]
    assert {r["status"] for r in broken} == {"error"} and "no kernel image" in broken[0]["reason"]
    flaky = [r for r in rows if r["contender"] == "flaky peer" and r["N"] == 8 and r["mode"] == "fwd"]
    assert [r["status"] for r in flaky] == ["error"] and "timing round" in flaky[0]["reason"]
    small = [r for r in rows if r["N"] == 8 and r["contender"] == "torch reference (eager)"]
    big = [r for r in rows if r["N"] == 16 and r["contender"] == "torch reference (eager)"]
    assert {r["status"] for r in small} == {"ok"}  # no rate known yet: it runs
    assert {r["status"] for r in big} == {"skipped"} and "--cap-s" in big[0]["reason"]
    assert [r for r in rows if r["contender"] == "torch reference (torch.compile)"][0]["status"] == "missing"


def test_bench_run_rejects_bad_arguments_and_writes_nothing(tmp_path):
    from bench import run  # noqa: PLC0415

    cases = [(["--dtypes", "fp8"], "--dtypes"), (["--ops", "sinkhorn,matmul"], "--ops"), (["--ops", ","], "--ops"),
             (["--N", "0"], "--N"), (["--B", ","], "--B"), (["--device", "tpu"], "--device"),
             (["--pairs", "0"], "--pairs"), (["--budget-s", "nan"], "--budget-s"), (["--cap-s", "-1"], "--cap-s")]
    for argv, name in cases:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                run.main(argv + ["--out", str(tmp_path / "o")])
        except SystemExit as exc:
            assert exc.code == 2, argv
        else:
            raise AssertionError(f"{argv} was accepted")
        assert name in err.getvalue(), (argv, err.getvalue())
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("peer", ["pot_cost", "geomloss_cost"])
def test_bench_peer_gradient_is_the_plan(peer):
    """A peer's fwd+bwd leaves d value / dC = P* (the plan), like fastot's envelope gradient: a peer that
    computed a different gradient would be timed doing different work."""
    import torch  # noqa: PLC0415

    from bench import peers  # noqa: PLC0415
    from fastot.reference import sinkhorn as ref  # noqa: PLC0415

    pytest.importorskip({"pot_cost": "ot", "geomloss_cost": "geomloss"}[peer])
    B, N, M, eps = 3, 7, 9, 0.5
    C = torch.rand(B, N, M, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = getattr(peers, peer)(C, eps, 300)
    backward = c.fwdbwd()
    if callable(backward):
        backward()
    a, b = torch.full((B, N), 1.0 / N, dtype=torch.float64), torch.full((B, M), 1.0 / M, dtype=torch.float64)
    f, g, _, _ = ref.sinkhorn_fwd(C, a, b, eps, 300)
    assert torch.allclose(c.input_grad(), ref.sinkhorn_plan(C, a, b, f, g, eps), atol=1e-8)
    fastot_c = peers.fastot_cost(C, eps, 300, "torch")
    fastot_c.fwdbwd()()
    assert torch.allclose(fastot_c.input_grad(), c.input_grad(), atol=1e-8)


def test_bench_ott_runs_exactly_the_iterations_asked():
    """ott-jax checks convergence every inner_iterations: the contender must still run exactly `iters`."""
    pytest.importorskip("ott")
    import torch  # noqa: PLC0415

    from bench import peers  # noqa: PLC0415
    from fastot.reference import sinkhorn as ref  # noqa: PLC0415

    B, N, eps = 2, 6, 0.3
    C = torch.rand(B, N, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.full((B, N), 1.0 / N, dtype=torch.float64)
    for iters in (3, 7):
        f, g = peers.ott_cost(C, eps, iters).fwd()
        # ott updates g first: the reference on C^T runs the same alternating updates from zero, so the
        # potentials agree (up to the gauge) only when the iteration counts do
        rg, rf, _, _ = ref.sinkhorn_fwd(C.transpose(1, 2), u, u, eps, iters)
        from bench.run import gauge_fixed  # noqa: PLC0415

        (f1, g1), (f2, g2) = gauge_fixed(f, g), gauge_fixed(rf, rg)
        assert torch.allclose(f1, f2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6), iters


def test_results_md_block_is_replaced_in_place(tmp_path):
    from bench import run  # noqa: PLC0415

    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nintro\n\n## Older history\nkept\n")
    run.update_results_md("first table", str(path))
    run.update_results_md("second table", str(path))
    text = path.read_text()
    assert text.count(run.BEGIN) == 1 and "second table" in text and "first table" not in text
    assert text.startswith("# Benchmark results\n") and "## Older history\nkept" in text
