"""The "Errors and edge cases" table of the README, walked on every backend that runs here, eager and compiled.

Each row is one bad (or borderline) input and its one documented outcome: a ValueError/TypeError naming the
argument, or a per-problem ``status`` code (NaN outputs for that problem only, see ``fastot.sinkhorn.STATUS``), or
the same answer as a clean input. Every row also checks that the inputs are unchanged. The expected results
are independent of the code under test: flagged problems must be NaN and the others must equal the float64
reference solved on the clean problems alone.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import backend_params

import fastot
from fastot.reference import sinkhorn as ref

SK_BACKENDS = backend_params("sinkhorn")
CS_BACKENDS = backend_params("codeswitch")
MODES = ["eager", "compiled"]
B, N, M, D = 3, 4, 5, 8
NAN, INF = float("nan"), float("inf")


def _problem(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64)
    a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.2
    a[2, 3:] = 0  # problem 2 is ragged: its last row and column are padding
    b[2, 4:] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return C.to(dtype), a.to(dtype), b.to(dtype)


def _set(t, idx, v):
    t = t.clone()
    t[idx] = v
    return t


# Each case: (id, build() -> (cost, a, b, kwargs), expected). expected: ("status", [B codes]) or
# ("raise", exception type, message pattern). Padding garbage rows: problem 2's row 3 / column 4.
def _case(fn):
    return fn


SINKHORN_CASES = [
    ("clean", lambda C, a, b: (C, a, b, {}), ("status", [0, 0, 0])),
    ("nan-in-real-entry", lambda C, a, b: (_set(C, (1, 0, 0), NAN), a, b, {}), ("status", [0, 2, 0])),
    ("neg-inf-in-real-entry", lambda C, a, b: (_set(C, (0, 1, 1), -INF), a, b, {}), ("status", [2, 0, 0])),
    ("nan-in-padded-row", lambda C, a, b: (_set(C, (2, 3, 0), NAN), a, b, {}), ("status", [0, 0, 0])),
    ("neg-inf-in-padded-column", lambda C, a, b: (_set(C, (2, 0, 4), -INF), a, b, {}), ("status", [0, 0, 0])),
    ("forbidden-pair", lambda C, a, b: (_set(C, (1, 0, 0), INF), a, b, {}), ("status", [0, 0, 0])),
    ("real-row-all-inf", lambda C, a, b: (_set(C, (1, 2), INF), a, b, {}), ("status", [0, 4, 0])),
    ("real-column-all-inf", lambda C, a, b: (_set(C, (0, slice(None), 3), INF), a, b, {}), ("status", [4, 0, 0])),
    ("real-row-all-inf-unbalanced", lambda C, a, b: (_set(C, (1, 2), INF), a, b, {"tau_a": 1.0}),
     ("status", [0, 0, 0])),
    ("nan-weight", lambda C, a, b: (C, _set(a, (0, 0), NAN), b, {}), ("status", [1, 0, 0])),
    ("inf-weight", lambda C, a, b: (C, a, _set(b, (1, 0), INF), {}), ("status", [0, 1, 0])),
    ("negative-weight", lambda C, a, b: (C, _set(a, (2, 0), -0.1), b, {}), ("status", [0, 0, 1])),
    ("negative-weight-in-padding", lambda C, a, b: (C, _set(a, (2, 3), -0.1), b, {}), ("status", [0, 0, 1])),
    ("unequal-masses", lambda C, a, b: (C, _set(a, 1, a[1] * 2), b, {}), ("status", [0, 5, 0])),
    ("unequal-masses-unbalanced", lambda C, a, b: (C, _set(a, 1, a[1] * 2), b, {"tau_b": 2.0}),
     ("status", [0, 0, 0])),
    ("empty-side", lambda C, a, b: (C, _set(a, 1, 0.0), b, {}), ("status", [0, 0, 0])),
    ("cost-over-eps-overflows", lambda C, a, b: (_set(C, 0, C[0] * 1e30), a, b, {"eps": 1e-8}),
     ("status", [3, 0, 0])),
    ("max-iter-0", lambda C, a, b: (C, a, b, {"max_iter": 0}), ("status", [0, 0, 0])),
    ("non-contiguous", lambda C, a, b: (torch.cat([C, C], 2)[:, :, ::2][:, :, :M].clone().transpose(1, 2)
                                        .contiguous().transpose(1, 2), a[:, None, :].expand(B, 2, N)[:, 0], b,
                                        {}), ("status", [0, 0, 0])),
    ("expanded-stride-0", lambda C, a, b: (C[:1].expand(B, N, M), a[:1].expand(B, N), b[:1].expand(B, M), {}),
     ("status", [0, 0, 0])),
    ("transposed", lambda C, a, b: (C.transpose(1, 2).clone().transpose(1, 2), a, b, {}), ("status", [0, 0, 0])),
    ("eps-zero", lambda C, a, b: (C, a, b, {"eps": 0.0}), ("raise", ValueError, "eps must be a positive")),
    ("eps-negative", lambda C, a, b: (C, a, b, {"eps": -0.1}), ("raise", ValueError, "eps must be a positive")),
    ("eps-nan", lambda C, a, b: (C, a, b, {"eps": NAN}), ("raise", ValueError, "eps must be a positive")),
    ("eps-inf", lambda C, a, b: (C, a, b, {"eps": INF}), ("raise", ValueError, "eps must be a positive finite")),
    ("eps-subnormal-fp32", lambda C, a, b: (C, a, b, {"eps": 1e-39}), ("raise", ValueError, "smallest normal")),
    ("tau-inf", lambda C, a, b: (C, a, b, {"tau_a": INF}), ("raise", ValueError, "tau_a must be a positive")),
    ("max-iter-negative", lambda C, a, b: (C, a, b, {"max_iter": -1}), ("raise", ValueError, "max_iter")),
    ("integer-cost", lambda C, a, b: ((C * 10).long(), a, b, {}), ("raise", TypeError, "cost must be floating")),
    ("bool-cost", lambda C, a, b: (C > 0.5, a, b, {}), ("raise", TypeError, "cost must be floating")),
    ("weights-on-another-device", lambda C, a, b: (C, a.to("meta"), b, {}), ("raise", ValueError, "a is on meta")),
    ("weights-wrong-shape", lambda C, a, b: (C, a[:, :2], b, {}), ("raise", ValueError, r"a must have shape")),
    ("integer-weights", lambda C, a, b: (C, (a > 0).long(), b, {}), ("raise", TypeError, "a must be floating")),
]

SHAPE_CASES = [(0, N, M), (B, 0, M), (B, N, 0)]


def _clone(ts):
    return [t.clone() if isinstance(t, torch.Tensor) and t.device.type != "meta" else t for t in ts]


def _unchanged(before, after):
    for x, y in zip(before, after):
        if isinstance(x, torch.Tensor) and x.device.type != "meta":
            torch.testing.assert_close(y, x, rtol=0, atol=0, equal_nan=True)


def _run(fn, mode, fullgraph=True):
    """fn() eager, or compiled (aot_eager traces the fakes and autograd as inductor does). An argument error under
    compile: dynamo stops at the raise (fullgraph=False lets the error reach the caller, as users see it)."""
    if mode == "compiled":
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=fullgraph, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the Triton interpreter's numpy warns on NaN
        return fn()


def _check_solved(res, C, a, b, kw, expected_status):
    """Flagged problems: NaN outputs and n_iter 0. The others: the float64 reference of that problem alone."""
    st = torch.tensor(expected_status, dtype=torch.int8)
    assert torch.equal(res.status.cpu(), st), f"status {res.status.tolist()} != {expected_status}"
    eps, max_iter = kw.get("eps", 0.1), kw.get("max_iter", 20)
    for k in range(C.shape[0]):
        if st[k]:
            for t in (res.f[k], res.g[k], res.value[k], res.transport_cost[k], res.err[k]):
                assert torch.isnan(t).all()
            assert res.n_iter[k] == 0
            continue
        f, g, n, err = ref.sinkhorn_fwd(C[k:k + 1].double(), a[k:k + 1].double(), b[k:k + 1].double(), eps,
                                        max_iter, None, kw.get("tau_a"), kw.get("tau_b"))
        atol = 1e-4 if res.f.dtype == torch.float32 else 1e-9
        scale = max(1.0, float(C[k][torch.isfinite(C[k])].abs().max()) if C[k].numel() else 1.0)
        torch.testing.assert_close(res.f[k:k + 1].double(), f, rtol=0, atol=atol * scale)
        torch.testing.assert_close(res.g[k:k + 1].double(), g, rtol=0, atol=atol * scale)
        assert torch.isfinite(res.value[k]) and res.n_iter[k] == n[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend,device", SK_BACKENDS)
@pytest.mark.parametrize("name,build,expected", SINKHORN_CASES, ids=[c[0] for c in SINKHORN_CASES])
def test_sinkhorn_edge_case(name, build, expected, backend, device, mode):
    C, a, b, kw = build(*_problem())
    # compiled: 3 iterations (tracing the torch backend's loop costs seconds per iteration; the status is not
    # iterative)
    kw = {"eps": 0.1, "max_iter": 20 if mode == "eager" else 3, **kw}
    before = _clone((C, a, b))
    if expected[0] == "raise":
        with pytest.raises(expected[1], match=expected[2]):
            _run(lambda: fastot.sinkhorn(C, a, b, backend=backend, **kw), mode, fullgraph=False)
        _unchanged(before, (C, a, b))
        return
    res = _run(lambda: fastot.sinkhorn(C, a, b, backend=backend, **kw), mode)
    _unchanged(before, (C, a, b))
    # the reference sees the padding cleaned (padded entries may hold anything)
    _check_solved(res, C.contiguous(), a.contiguous(), b.contiguous(), kw, expected[1])
    if name == "max-iter-0":
        assert (res.f == 0).all() and (res.g == 0).all() and (res.n_iter == 0).all()
    if name == "empty-side":
        assert res.value[1] == 0 and res.transport_cost[1] == 0
    if name.startswith(("nan-in-padded", "neg-inf-in-padded")):
        clean = fastot.sinkhorn(*_problem(), eps=0.1, max_iter=kw["max_iter"], backend=backend)
        torch.testing.assert_close(res.value, clean.value, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", SK_BACKENDS)
@pytest.mark.parametrize("shape", SHAPE_CASES, ids=["B0", "N0", "M0"])
def test_sinkhorn_empty_shapes(shape, backend, device):
    C = torch.rand(*shape)
    res = fastot.sinkhorn(C, eps=0.1, max_iter=5, backend=backend)
    assert res.f.shape == shape[:2] and res.g.shape == (shape[0], shape[2]) and res.status.shape == (shape[0],)
    assert (res.status == 0).all() and (res.value == 0).all() and (res.transport_cost == 0).all()


@pytest.mark.parametrize("backend,device", SK_BACKENDS)
def test_flagged_problem_gradients_are_nan_and_the_others_are_untouched(backend, device):
    C, a, b = _problem()
    C = _set(C, (1, 0, 0), NAN).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=20, backend=backend)
        res.value.sum().backward()
    assert torch.isnan(C.grad[1]).all() and torch.isfinite(C.grad[[0, 2]]).all()
    keep = torch.tensor([0, 2])
    C2 = C.detach()[keep].clone().requires_grad_()
    fastot.sinkhorn(C2, a[keep], b[keep], eps=0.1, max_iter=20, backend=backend).value.sum().backward()
    torch.testing.assert_close(C.grad[keep], C2.grad, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"1 of 3 problems flagged: bad cost.* in problem \[1\]"):
        res.check()


def test_unrolled_flags_the_same_problems_and_honours_fastot_backend(monkeypatch):
    C, a, b = _problem(torch.float64)
    C = _set(C, (1, 0, 0), NAN).requires_grad_()
    res = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=20, grad="unrolled")
    assert res.status.tolist() == [0, 2, 0] and res.value[1].isnan() and torch.isfinite(res.value[[0, 2]]).all()
    res.value.sum().backward()
    assert torch.isnan(C.grad[1]).all() and torch.isfinite(C.grad[[0, 2]]).all()
    monkeypatch.setenv("FASTOT_BACKEND", "cpp")
    with pytest.raises(fastot.BackendUnavailable, match="FASTOT_BACKEND='cpp'"):
        fastot.sinkhorn(C, a, b, eps=0.1, grad="unrolled")
    fastot.sinkhorn(C, a, b, eps=0.1, grad="unrolled", backend="torch")  # the argument wins
    monkeypatch.setenv("FASTOT_BACKEND", "torch")
    fastot.sinkhorn(C, a, b, eps=0.1, grad="unrolled")


# --------------------------------------------------------------------------- sinkhorn_embeddings
def _emb():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, N, D, generator=g), torch.randn(B, M, D, generator=g)
    xm, ym = torch.ones(B, N, dtype=torch.bool), torch.ones(B, M, dtype=torch.bool)
    xm[2, 3:] = False
    ym[2, 4:] = False
    return x, y, xm, ym


EMB_CASES = [
    ("clean", lambda x, y, xm, ym: (x, y, xm, ym, {}), ("status", [0, 0, 0])),
    ("nan-in-real-token", lambda x, y, xm, ym: (_set(x, (1, 0, 0), NAN), y, xm, ym, {}), ("status", [0, 2, 0])),
    ("inf-in-real-token", lambda x, y, xm, ym: (x, _set(y, (0, 2, 3), INF), xm, ym, {}), ("status", [2, 0, 0])),
    ("nan-in-padded-token", lambda x, y, xm, ym: (_set(x, (2, 3), NAN), y, xm, ym, {}), ("status", [0, 0, 0])),
    ("sqeuclidean-overflow", lambda x, y, xm, ym: (_set(x, 0, x[0] * 1e19), y, xm, ym, {"cost": "sqeuclidean"}),
     ("status", [3, 0, 0])),
    ("mask-with-2", lambda x, y, xm, ym: (x, y, xm.long() * 2, ym, {}), ("status", [0, 0, 0])),
    ("nan-weight", lambda x, y, xm, ym: (x, y, xm, ym, {"a": _set(xm / xm.sum(1, keepdim=True), (0, 1), NAN)}),
     ("status", [1, 0, 0])),
    ("unequal-masses", lambda x, y, xm, ym: (x, y, xm, ym, {"a": torch.full((B, N), 0.25)}),  # 3 tokens x 0.25
     ("status", [0, 0, 5])),
    ("mask-on-another-device", lambda x, y, xm, ym: (x, y, xm.to("meta"), ym, {}),
     ("raise", ValueError, "x_mask is on meta but x is on cpu")),
    ("weights-wrong-shape-with-mask", lambda x, y, xm, ym: (x, y, xm, ym, {"a": torch.ones(B, 1)}),
     ("raise", ValueError, r"a must have shape \[3, 4\]")),
    ("integer-embeddings", lambda x, y, xm, ym: (x.long(), y, xm, ym, {}), ("raise", TypeError, "floating point")),
    ("y-on-another-device", lambda x, y, xm, ym: (x, y.to("meta"), xm, ym, {}),
     ("raise", ValueError, "x is on cpu but y is on meta")),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend,device", SK_BACKENDS)
@pytest.mark.parametrize("name,build,expected", EMB_CASES, ids=[c[0] for c in EMB_CASES])
def test_sinkhorn_embeddings_edge_case(name, build, expected, backend, device, mode):
    x, y, xm, ym, kw = build(*_emb())
    # compiled: 3 iterations (tracing the torch backend's loop costs seconds per iteration; the status is not
    # iterative)
    kw = {"eps": 0.1, "max_iter": 20 if mode == "eager" else 3, **kw}
    before = _clone((x, y, xm, ym))
    if expected[0] == "raise":
        with pytest.raises(expected[1], match=expected[2]):
            _run(lambda: fastot.sinkhorn_embeddings(x, y, xm, ym, backend=backend, **kw), mode, fullgraph=False)
        _unchanged(before, (x, y, xm, ym))
        return
    res = _run(lambda: fastot.sinkhorn_embeddings(x, y, xm, ym, backend=backend, **kw), mode)
    _unchanged(before, (x, y, xm, ym))
    a = res._a if "a" not in kw else kw["a"] * xm
    C = fastot.pairwise_cost(torch.nan_to_num(x.double(), nan=0.0), torch.nan_to_num(y.double(), nan=0.0),
                             kw.get("cost", "cosine"))
    _check_solved(res, C, a, res._b, kw, expected[1])


# --------------------------------------------------------------------------- code-switch
@pytest.fixture(scope="module")
def switch_setup(minilm_tokenizer):
    lex = fastot.Lexicon.from_pairs([("river", "mto"), ("market", "soko"), ("water", "maji")], minilm_tokenizer,
                                    languages="sw")
    enc = minilm_tokenizer(["the river and the market", "water"], ["a market", "the river bank"], padding=True,
                           return_tensors="pt")
    return lex, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _direct_op(backend):
    if backend in ("cpp", "cuda"):
        return torch.ops.fastot.codeswitch
    if backend == "triton":
        from fastot.triton import codeswitch as tcs  # noqa: PLC0415

        return tcs.codeswitch
    from fastot.reference.codeswitch import codeswitch  # noqa: PLC0415

    return codeswitch


CS_CASES = [
    ("id-beyond-vocabulary", lambda ids, m, tt: (_set(ids, (0, 2), 10 ** 6), m, tt), r"input_ids must be in \[0, 30522\)"),
    ("negative-id", lambda ids, m, tt: (_set(ids, (1, 1), -5), m, tt), r"input_ids must be in \[0, 30522\)"),
    ("mask-value-2", lambda ids, m, tt: (ids, _set(m, (0, 1), 2), tt), "attention_mask must be 0 or 1"),
    ("mask-value-half", lambda ids, m, tt: (ids, m.float() * 0.5, tt), "attention_mask must be 0 or 1"),
]


@pytest.mark.parametrize("backend,device", CS_BACKENDS)
@pytest.mark.parametrize("name,build,match", CS_CASES, ids=[c[0] for c in CS_CASES])
def test_codeswitch_edge_case_public_and_direct_op(name, build, match, backend, device, switch_setup):
    lex, ids, mask, tt = switch_setup
    ids, mask, tt = build(ids, mask, tt)
    before = _clone((ids, mask, tt))
    cs = fastot.CodeSwitcher(lex, p=1.0, backend=backend)
    with pytest.raises(ValueError, match=match):
        cs(ids, mask, tt)
    args = list(cs._op_args(ids, mask, tt, 0, None))
    args[:3] = ids, mask, tt  # as given (the public call hands the op int64 copies)
    with pytest.raises((ValueError, RuntimeError), match=match):  # the registered op raises RuntimeError
        _direct_op(backend)(*args)
    _unchanged(before, (ids, mask, tt))


@pytest.mark.parametrize("backend,device", [p for p in CS_BACKENDS if p.values[0] != "torch"])
@pytest.mark.parametrize("name,build,match", CS_CASES[:3], ids=[c[0] for c in CS_CASES[:3]])
def test_codeswitch_edge_case_compiled(name, build, match, backend, device, switch_setup):
    """Under torch.compile the checks run on the device (torch._assert_async): the compiled call raises with the
    same message when it runs. (The torch reference's code-switch is not fullgraph-traceable: data-dependent
    shapes; it is the oracle, not a compile target.)"""
    lex, ids0, mask0, tt0 = switch_setup
    ids, mask, tt = build(ids0, mask0, tt0)
    cs = fastot.CodeSwitcher(lex, p=1.0, backend=backend)
    torch._dynamo.reset()
    fn = torch.compile(lambda i, m, t: cs(i, m, t, max_length=24).input_ids, fullgraph=True, backend="aot_eager")
    assert fn(ids0, mask0, tt0).shape == (2, 24)  # the clean batch runs
    with pytest.raises(RuntimeError, match=match):
        fn(ids, mask, tt)


@pytest.mark.parametrize("backend,device", CS_BACKENDS)
def test_codeswitch_direct_op_checks_the_languages(backend, device, switch_setup):
    lex, ids, mask, tt = switch_setup
    cs = fastot.CodeSwitcher(lex, p=1.0, backend=backend)
    args = list(cs._op_args(ids, mask, tt, 0, None))
    args[11] = torch.tensor([3])  # lang_ids: the lexicon has one language
    with pytest.raises((ValueError, RuntimeError), match=r"lang_ids must be in \[0, 1\)"):
        _direct_op(backend)(*args)
    args[11] = torch.tensor([0])
    out = _direct_op(backend)(*args)  # the right arguments still pass
    assert out[0].shape[0] == 2


@pytest.mark.parametrize("backend,device", CS_BACKENDS)
def test_codeswitch_lexicon_of_another_tokenizer(backend, device, switch_setup, sentencepiece_tokenizer,
                                                 minilm_tokenizer):
    """A lexicon built for the fixture's 183-token SentencePiece vocabulary, fed MiniLM ids: a clear error, never
    a read past its tables; the collator refuses the pairing up front."""
    _, ids, mask, tt = switch_setup
    lex = fastot.Lexicon.from_pairs([("river", "mto"), ("market", "soko")], sentencepiece_tokenizer,
                                    languages="sw")
    cs = fastot.CodeSwitcher(lex, p=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 183\).*another tokenizer"):
        cs(ids, mask, tt)
    with pytest.raises((ValueError, RuntimeError), match=r"input_ids must be in \[0, 183\)"):
        _direct_op(backend)(*cs._op_args(ids, mask, tt, 0, None))
    with pytest.raises(ValueError, match="vocabulary"):
        fastot.CodeSwitchCollator(minilm_tokenizer, cs, max_length=16)


def test_collator_refuses_a_same_size_vocabulary_of_another_tokenizer(switch_setup, minilm_tokenizer):
    lex, _, _, _ = switch_setup
    T = lex.tensors()
    flipped = dict(T, word_start=~T["word_start"] | T["special"])  # same size, other word starts
    other = fastot.Lexicon(flipped, lex.languages, lex.max_key_len, lex.pad_id, lex.scheme)
    with pytest.raises(ValueError, match="word starts or special tokens differ"):
        fastot.CodeSwitchCollator(minilm_tokenizer, fastot.CodeSwitcher(other), max_length=16)
