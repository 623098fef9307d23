"""Training that survives faults: ``fastot distill`` and ``fastot rerank`` killed with SIGKILL (no cleanup, as a
machine failure) at a training step, inside a checkpoint save and just before the checkpoint's rename, then
rerun: the run resumes and ends with the weights of an uninterrupted run, every step logged once. A truncated
or corrupt checkpoint, config or lexicon is a clear error naming the file, and nothing is overwritten.

The kill points are the ``FASTOT_FAULT_AT`` hook of ``fastot.train._run.fault_point``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from test_distill import bitext  # noqa: E402,F401  (the fixture)
from test_distill import cfg as distill_cfg  # noqa: E402
from test_rerank import cfg as rerank_cfg  # noqa: E402
from test_rerank import sample  # noqa: E402,F401  (the fixture)

from fastot.train import distill, train_reranker  # noqa: E402

# save_every=2, max_steps=6: killed after step 3 (resume from checkpoint-2), while checkpoint-4 is half written,
# and with checkpoint-4 complete in its .tmp folder but not renamed (both resume from checkpoint-2).
POINTS = ["step:3", "save:4", "replace:4"]
DRIVER = r"""
import pickle, sys
from fastot.train import distill, train_reranker
kind, cfg = pickle.load(open(sys.argv[1], "rb"))
(distill if kind == "distill" else train_reranker)(cfg)
"""


def _run_killed(kind, cfg, point, tmp_path):
    path = tmp_path / f"cfg-{point.replace(':', '-')}.pkl"
    path.write_bytes(pickle.dumps((kind, cfg)))
    env = {**os.environ, "FASTOT_FAULT_AT": point}  # same thread count as this process: same rounding
    res = subprocess.run([sys.executable, "-c", DRIVER, str(path)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr[-3000:])


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _steps_logged(out):
    return [r["step"] for r in map(json.loads, open(os.path.join(out, "log.jsonl"))) if "loss" in r]


@pytest.mark.parametrize("kind", ["distill", "rerank"])
def test_sigkill_at_any_point_resumes_to_the_uninterrupted_weights(kind, request, tmp_path):
    if kind == "distill":
        data, make, train, name = request.getfixturevalue("bitext"), distill_cfg, distill, "student"
        extra = dict(eval_split=None)
    else:
        data, make, train, name = request.getfixturevalue("sample"), rerank_cfg, train_reranker, "reranker"
        extra = {}
    full = tmp_path / "full"
    train(make(data, full, **extra))
    expect = _weights(full / name)
    for point in POINTS:
        out = tmp_path / f"cut-{point.replace(':', '-')}"
        c = make(data, out, **extra)
        _run_killed(kind, c, point, tmp_path)
        assert not (out / name).exists()  # the run did not finish
        if point != "step:3":
            assert (out / "checkpoint-4.tmp").is_dir() and not (out / "checkpoint-4").exists()
        res = train(c)  # resume is the default
        assert res["steps"] == 6
        _same(expect, _weights(out / name))
        assert _steps_logged(out) == [1, 2, 3, 4, 5, 6], point  # the redone steps are logged once


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])


@pytest.mark.parametrize("victim", ["trainer.pt", "model.safetensors", "config.json"])
def test_a_corrupt_checkpoint_or_config_is_an_error_naming_it_and_changes_nothing(victim, bitext, tmp_path):
    out = tmp_path / "run"
    c = distill_cfg(bitext, out, eval_split=None, max_steps=4, save_every=2)
    _run_killed("distill", c, "step:3", tmp_path)
    target = {"trainer.pt": out / "checkpoint-2" / "trainer.pt",
              "model.safetensors": out / "checkpoint-2" / "student" / "model.safetensors",
              "config.json": out / "config.json"}[victim]
    _truncate(target)
    before = {p: open(p, "rb").read() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=rf"{victim}.* (is truncated or corrupt|is corrupt or truncated)"):
        distill(c)
    after = {p: open(p, "rb").read() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no silent restart, nothing overwritten


def test_a_corrupt_lexicon_is_an_error_naming_it(sample, tmp_path):
    import fastot

    out = tmp_path / "run"
    c = rerank_cfg(sample, out, max_steps=4, save_every=2)
    _run_killed("rerank", c, "step:3", tmp_path)
    _truncate(out / "lexicon.pt")
    with pytest.raises(ValueError, match="lexicon.pt"):
        train_reranker(c)
    with pytest.raises(ValueError, match="lexicon.pt.*not a fastot lexicon file"):
        fastot.Lexicon.load(str(out / "lexicon.pt"))
