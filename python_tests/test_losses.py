"""OTDistillationLoss: the OPTICAL loss <P*, C> against its definition in float64 and against POT; masks,
special tokens, projections, reductions, half precision, the fused path's memory, and bad input."""

import pytest
import torch
from conftest import backend_params
from torch import nn

import fastot
from fastot import OTDistillationLoss, content_mask, ot_distillation_loss
from fastot.reference import sinkhorn as ref


def hidden(B=3, N=7, M=9, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, N, d, generator=g, dtype=dtype)
    yt = torch.randn(B, M, d, generator=g, dtype=dtype)
    ms = torch.arange(N)[None] < torch.tensor([N, 4, 1][:B] + [N] * max(B - 3, 0))[:, None]
    mt = torch.arange(M)[None] < torch.tensor([M, 2, 6][:B] + [M] * max(B - 3, 0))[:, None]
    return xs, ms, yt, mt


def definition(xs, ms, yt, mt, eps, iters, cost="cosine"):
    """<P*, C> per pair, from the reference solver on the materialised cost; P* detached (envelope)."""
    C = fastot.pairwise_cost(xs, yt, cost)
    a = ms.double() / ms.sum(1, keepdim=True).clamp_min(1)
    b = mt.double() / mt.sum(1, keepdim=True).clamp_min(1)
    f, g, _, _ = ref.sinkhorn_fwd(C.detach(), a, b, eps, iters)
    P = ref.sinkhorn_plan(C.detach(), a, b, f, g, eps)
    return (P * C).sum((1, 2))


@pytest.mark.parametrize("backend,device", backend_params("sinkhorn"))
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean", "dot"])
def test_loss_and_gradient_match_the_definition(backend, device, cost):
    xs, ms, yt, mt = hidden()
    eps = 0.05 if cost == "cosine" else 1.0
    want = definition(xs.clone().requires_grad_(), ms, yt, mt, eps, 200, cost)
    x_ref = xs.clone().requires_grad_()
    definition(x_ref, ms, yt, mt, eps, 200, cost).mean().backward()

    x = xs.clone().to(device).requires_grad_()
    got = ot_distillation_loss(x, ms.to(device), yt.to(device), mt.to(device), eps=eps, max_iter=200, cost=cost,
                               reduction="none", backend=backend)
    torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=1e-9, atol=1e-10)
    got.mean().backward()
    torch.testing.assert_close(x.grad.cpu(), x_ref.grad, rtol=1e-8, atol=1e-10)


def test_matches_pot_per_pair():
    ot = pytest.importorskip("ot")
    xs, ms, yt, mt = hidden(seed=3)
    got = ot_distillation_loss(xs, ms, yt, mt, eps=0.1, max_iter=2000, reduction="none")
    for i in range(xs.shape[0]):
        x, y = xs[i][ms[i]], yt[i][mt[i]]
        C = (1 - nn.functional.normalize(x, dim=-1) @ nn.functional.normalize(y, dim=-1).T).numpy()
        a = torch.full((len(x),), 1 / len(x), dtype=torch.float64).numpy()
        b = torch.full((len(y),), 1 / len(y), dtype=torch.float64).numpy()
        P = ot.sinkhorn(a, b, C, 0.1, method="sinkhorn_log", numItermax=5000, stopThr=1e-13)
        assert float(got[i]) == pytest.approx(float((P * C).sum()), rel=1e-7)


def test_padding_garbage_and_masks():
    xs, ms, yt, mt = hidden()
    base = ot_distillation_loss(xs, ms, yt, mt, eps=0.05, reduction="none")
    xs2, yt2 = xs.clone(), yt.clone()
    xs2[~ms] = 1e6  # whatever the encoder puts at padded positions carries no mass
    yt2[~mt] = float("nan")
    torch.testing.assert_close(ot_distillation_loss(xs2, ms, yt2, mt, eps=0.05, reduction="none"), base)
    # a pair reduced to its real tokens gives the same loss as the padded one
    one = ot_distillation_loss(xs[1:2, :4], None, yt[1:2, :2], None, eps=0.05, reduction="none")
    torch.testing.assert_close(one, base[1:2])


def test_reductions_and_empty_pairs():
    xs, ms, yt, mt = hidden(B=4)
    ms[3] = False  # a pair with no student token: no loss, and left out of the mean
    per = ot_distillation_loss(xs, ms, yt, mt, eps=0.05, reduction="none")
    assert per[3] == 0
    assert float(ot_distillation_loss(xs, ms, yt, mt, eps=0.05, reduction="sum")) == pytest.approx(float(per.sum()))
    assert float(ot_distillation_loss(xs, ms, yt, mt, eps=0.05)) == pytest.approx(float(per[:3].mean()))
    x = xs.clone().requires_grad_()
    ot_distillation_loss(x, ms, yt, mt, eps=0.05).backward()
    assert x.grad[3].abs().max() == 0 and x.grad[~ms].abs().max() == 0


def test_sinkhorn_objective_is_the_entropic_value():
    xs, ms, yt, mt = hidden()
    got = ot_distillation_loss(xs, ms, yt, mt, eps=0.1, max_iter=100, reduction="none", objective="sinkhorn")
    want = fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=0.1, max_iter=100).value
    torch.testing.assert_close(got, want)


def test_teacher_gets_no_gradient_and_module_matches_function():
    xs, ms, yt, mt = hidden()
    x, y = xs.clone().requires_grad_(), yt.clone().requires_grad_()
    crit = OTDistillationLoss(eps=0.05, max_iter=30)
    loss = crit(x, ms, y, mt)
    loss.backward()
    assert y.grad is None and x.grad is not None
    assert float(loss.detach()) == float(ot_distillation_loss(xs, ms, yt, mt, eps=0.05, max_iter=30))
    assert "eps=0.05" in repr(crit)


def test_projection_for_different_dimensions():
    xs, ms, _, _ = hidden(d=8)
    _, _, yt, mt = hidden(d=12)
    with pytest.raises(ValueError, match="projection"):
        ot_distillation_loss(xs, ms, yt, mt)
    crit = OTDistillationLoss(projection=nn.Linear(8, 12, dtype=torch.float64))
    assert len(list(crit.parameters())) == 2  # the projection trains with the student
    crit(xs, ms, yt, mt).backward()
    assert crit.projection.weight.grad.abs().sum() > 0


def test_half_precision_student_and_fp32_teacher():
    xs, ms, yt, mt = hidden(dtype=torch.float32)
    want = ot_distillation_loss(xs.bfloat16().float(), ms, yt, mt, eps=0.05)
    x = xs.bfloat16().requires_grad_()
    got = ot_distillation_loss(x, ms, yt, mt, eps=0.05)  # solved in fp32
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    got.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_content_mask_drops_special_and_padding(minilm_tokenizer):
    tok = minilm_tokenizer
    enc = tok(["a river", "the market is open"], padding=True, return_tensors="pt")
    m = content_mask(enc["input_ids"], enc["attention_mask"], tok.all_special_ids)
    words = [tok.convert_ids_to_tokens(row[mask]) for row, mask in zip(enc["input_ids"], m)]
    assert words == [["a", "river"], ["the", "market", "is", "open"]]
    with pytest.raises(ValueError, match="attention_mask"):
        content_mask(enc["input_ids"], enc["attention_mask"][:, :2], tok.all_special_ids)
    # The tokenizer's own special-tokens mask is the oracle; the id tensor is built once, not once per step.
    enc = tok(["a river", "the market is open"], padding=True, return_tensors="pt", return_special_tokens_mask=True)
    expect = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)
    assert torch.equal(content_mask(enc["input_ids"], enc["attention_mask"], tok.all_special_ids), expect)
    from fastot.losses import _special_tensor

    first = _special_tensor(tok.all_special_ids, torch.long, torch.device("cpu"))
    assert _special_tensor(list(reversed(tok.all_special_ids)), torch.long, torch.device("cpu")) is first
    assert torch.equal(content_mask(enc["input_ids"], enc["attention_mask"], first), expect)


def test_fused_loss_never_allocates_a_cost_sized_tensor():
    if "cpp" not in fastot.available_backends("sinkhorn", "cpu"):
        pytest.skip("the compiled extension is not loaded")
    B, N, M, d = 8, 48, 40, 4  # [B,N,M] = 15360 entries; hidden states 1536 and 1280
    xs = torch.randn(B, N, d, requires_grad=True)
    yt = torch.randn(B, M, d)

    def largest(backend):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            ot_distillation_loss(xs, None, yt, None, eps=0.1, max_iter=3, backend=backend).backward()
        return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)

    assert largest("torch") >= B * N * M * 4  # the measurement sees the materialised cost
    assert largest(None) < B * N * M  # auto on CPU is fused (cpp): per-thread scratch of about one problem, not [B,N,M]


def test_auto_prefers_fused_backends_for_embeddings(monkeypatch):
    from fastot import _backend

    # Until a GPU run has passed, auto on CUDA tensors takes triton over cuda for every op (as if both ran here).
    monkeypatch.setattr(_backend, "why_unavailable", lambda be, op, dev: None)
    for op in _backend.OPS:
        assert _backend.resolve(op, torch.device("cuda"), None) == "triton"
        assert _backend.resolve(op, torch.device("cuda"), None, _backend.AUTO_ORDER_FUSED) == "triton"
    monkeypatch.undo()
    assert _backend.resolve("sinkhorn", torch.device("cpu"), None, _backend.AUTO_ORDER_FUSED) == \
        ("cpp" if "cpp" in fastot.available_backends("sinkhorn", "cpu") else "torch")


def test_compile_fullgraph_smoke():
    xs, ms, yt, mt = hidden(dtype=torch.float32)
    x = xs.clone().requires_grad_()
    crit = OTDistillationLoss(eps=0.1, max_iter=10)
    out = torch.compile(crit, fullgraph=True, backend="aot_eager")(x, ms, yt, mt)
    out.backward()
    torch.testing.assert_close(out.detach(), crit(xs, ms, yt, mt))


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=0), "eps"), (dict(max_iter=0), "max_iter"), (dict(cost="l1"), "cost"),
    (dict(reduction="avg"), "reduction"), (dict(objective="kl"), "objective"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OTDistillationLoss(**kwargs)
    x, m = torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=match):  # the function checks the same options
        ot_distillation_loss(x, m, x, m, **kwargs)


def test_bad_inputs_name_the_argument():
    xs, ms, yt, mt = hidden()
    with pytest.raises(ValueError, match="student_hidden"):
        ot_distillation_loss(xs[0], ms, yt, mt)
    with pytest.raises(ValueError, match="teacher_mask"):
        ot_distillation_loss(xs, ms, yt, mt[:, :3])
    with pytest.raises(ValueError, match="pairs"):
        ot_distillation_loss(xs, ms, yt[:2], mt[:2])
    with pytest.raises(ValueError, match="student_hidden"):
        ot_distillation_loss(xs.long(), ms, yt, mt)
