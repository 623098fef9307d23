"""Property-based tests (hypothesis): random ragged shapes (1, primes, sizes that are no multiple of any vector
width or tile, up to a few hundred), eps over three decades, cost scales, masks and dtypes, on every backend.

Two profiles (``FASTOT_HYPOTHESIS``): ``ci`` (default; derandomized, a fixed set of examples that fits the CI
budget) and ``long`` (at least 5,000 examples per property on torch and cpp; the Triton interpreter runs about a
second per solve, so its properties get ``FASTOT_HYPOTHESIS_TRITON`` examples, default 300). The long run's
numbers are in bench/RESULTS.md.

Tolerance (documented in the README): after k iterations the fp32 potentials are within
``2e-6 * k * (max |C| + eps log(NM) + 1)`` of the float64 reference's, the fp64 ones within ``1e-13 * k * (...)``;
the log-domain update is non-expansive in the sup norm, so rounding grows at most linearly with k.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from conftest import backend_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastot
from fastot.reference import sinkhorn as ref

PROFILE = os.environ.get("FASTOT_HYPOTHESIS", "ci")
LONG = PROFILE == "long"
TRITON_LONG = int(os.environ.get("FASTOT_HYPOTHESIS_TRITON", "300"))
SK_BACKENDS = backend_params("sinkhorn")
CS_BACKENDS = backend_params("codeswitch")
SIZES = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 17, 31, 33, 63, 65, 97, 127, 129]), st.integers(1, 300))
SMALL_SIZES = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 17]), st.integers(1, 24))


COUNTS: dict[str, int] = {}  # examples run per (property, backend); written to $FASTOT_HYPOTHESIS_COUNTS at the end


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    path = os.environ.get("FASTOT_HYPOTHESIS_COUNTS")
    if path:
        import json  # noqa: PLC0415

        with open(path, "w") as fh:
            json.dump({"profile": PROFILE, "examples": COUNTS}, fh, indent=1, sort_keys=True)


def _settings(ci: int, backend: str | None = None):
    n = ci if not LONG else (TRITON_LONG if backend == "triton" else max(5000, ci))
    return settings(max_examples=n, deadline=None, derandomize=not LONG, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def _per_backend(test, ci_fast: int, ci_triton: int):
    """Parametrize ``test(backend, device, data)`` over the backends, each with its own example budget."""
    params = []
    for p in SK_BACKENDS:
        be = p.values[0]
        n = ci_triton if be == "triton" else ci_fast
        if be == "triton" and any(m.name == "sinkhorn_method" for m in p.marks):
            n = max(2, n // 2)  # the interpreter's second scheme: half the examples (CI time)
        wrapped = _settings(n, be)(given(data=st.data())(test))
        params.append(pytest.param(*p.values, wrapped, id=p.id, marks=p.marks))
    return params


def _problem(data, backend, *, dtype=None, allow_ragged=True):
    """A random batch: B problems, ragged through zero weights, costs of a random scale, eps over three decades."""
    sizes = SMALL_SIZES if backend == "triton" else SIZES
    B = data.draw(st.integers(1, 4), label="B")
    N, M = data.draw(sizes, label="N"), data.draw(sizes, label="M")
    if dtype is None:
        dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    scale = 10 ** data.draw(st.floats(-1, 1), label="log10 scale")
    eps = scale * 10 ** data.draw(st.floats(-2, 1), label="log10 eps/scale")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * scale
    a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.05
    b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.05
    if allow_ragged and data.draw(st.booleans(), label="ragged"):
        for k in range(B):
            a[k, int(torch.randint(1, N + 1, (1,), generator=g)):] = 0
            b[k, int(torch.randint(1, M + 1, (1,), generator=g)):] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return C.to(dtype), a.to(dtype), b.to(dtype), eps, scale


def _iters(backend):
    return 10 if backend == "triton" else 30


def _tol(dtype, k, scale, eps, N, M):
    unit = 2e-6 if dtype == torch.float32 else 1e-13
    return unit * max(k, 1) * (scale + eps * math.log(N * M + 1) + 1)


# --------------------------------------------------------------------------- Sinkhorn properties
def _agrees_with_float64(backend, device, data):
    _count(f"agrees_with_float64[{backend}]")
    C, a, b, eps, scale = _problem(data, backend)
    k = _iters(backend)
    r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=k, backend=backend)
    f, g, n, err = ref.sinkhorn_fwd(C.double(), a.double(), b.double(), eps, k)
    tol = _tol(C.dtype, k, scale, eps, *C.shape[1:])
    assert (r.status == 0).all()
    assert (r.f.double() - f).abs().max() <= tol and (r.g.double() - g).abs().max() <= tol
    assert torch.equal(r.n_iter, n)


@pytest.mark.parametrize("backend,device,run", _per_backend(_agrees_with_float64, 60, 12))
def test_every_backend_agrees_with_float64_reference(backend, device, run):
    run(backend, device)


def _shift_invariance(backend, device, data):
    """C + c: f shifts by c, g and the plan are unchanged, value shifts by c (probability weights, balanced)."""
    _count(f"shift_invariance[{backend}]")
    C, a, b, eps, scale = _problem(data, backend, dtype=torch.float64)
    c = data.draw(st.floats(-5, 5), label="c") * scale
    k = _iters(backend)
    r0 = fastot.sinkhorn(C, a, b, eps=eps, max_iter=k, backend=backend)
    r1 = fastot.sinkhorn(C + c, a, b, eps=eps, max_iter=k, backend=backend)
    tol = _tol(C.dtype, k, scale + abs(c), eps, *C.shape[1:]) * 10
    real_a = a > 0
    assert ((r1.f - r0.f - c).abs() * real_a).max() <= tol and (r1.g - r0.g).abs().max() <= tol
    assert (r1.value - r0.value - c).abs().max() <= tol
    assert (r1.plan() - r0.plan()).abs().max() <= tol / eps


@pytest.mark.parametrize("backend,device,run", _per_backend(_shift_invariance, 30, 6))
def test_adding_a_constant_to_the_cost(backend, device, run):
    run(backend, device)


def _permutation(backend, device, data):
    _count(f"permutation[{backend}]")
    C, a, b, eps, scale = _problem(data, backend)
    B, N, M = C.shape
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1), label="perm seed"))
    pi, pj = torch.randperm(N, generator=g), torch.randperm(M, generator=g)
    k = _iters(backend)
    r0 = fastot.sinkhorn(C, a, b, eps=eps, max_iter=k, backend=backend)
    r1 = fastot.sinkhorn(C[:, pi][:, :, pj], a[:, pi], b[:, pj], eps=eps, max_iter=k, backend=backend)
    tol = 2 * _tol(C.dtype, k, scale, eps, N, M)
    assert (r1.f - r0.f[:, pi]).abs().max() <= tol and (r1.g - r0.g[:, pj]).abs().max() <= tol


@pytest.mark.parametrize("backend,device,run", _per_backend(_permutation, 30, 6))
def test_permuting_points_permutes_potentials(backend, device, run):
    run(backend, device)


def _padding(backend, device, data):
    """Extra zero-weight rows/columns holding garbage (NaN, +-inf) change nothing; their potentials are 0."""
    _count(f"padding[{backend}]")
    C, a, b, eps, scale = _problem(data, backend, allow_ragged=False)
    B, N, M = C.shape
    pn, pm = data.draw(st.integers(0, 9), label="pad N"), data.draw(st.integers(0, 9), label="pad M")
    garbage = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30]), label="garbage")
    Cp = torch.full((B, N + pn, M + pm), garbage, dtype=C.dtype)
    Cp[:, :N, :M] = C
    ap, bp = torch.zeros(B, N + pn, dtype=a.dtype), torch.zeros(B, M + pm, dtype=b.dtype)
    ap[:, :N], bp[:, :M] = a, b
    k = _iters(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the Triton interpreter's numpy warns on the garbage
        r0 = fastot.sinkhorn(C, a, b, eps=eps, max_iter=k, backend=backend)
        r1 = fastot.sinkhorn(Cp, ap, bp, eps=eps, max_iter=k, backend=backend)
    tol = _tol(C.dtype, k, scale, eps, N, M)
    assert (r1.status == 0).all()
    assert (r1.f[:, :N] - r0.f).abs().max() <= tol and (r1.g[:, :M] - r0.g).abs().max() <= tol
    assert (r1.f[:, N:] == 0).all() and (r1.g[:, M:] == 0).all()
    assert (r1.value - r0.value).abs().max() <= tol


@pytest.mark.parametrize("backend,device,run", _per_backend(_padding, 30, 6))
def test_a_padded_problem_equals_the_sliced_one(backend, device, run):
    run(backend, device)


def _scaling(backend, device, data):
    """(k C, k eps): the same plan, potentials times k."""
    _count(f"scaling[{backend}]")
    C, a, b, eps, scale = _problem(data, backend, dtype=torch.float64)
    s = 10 ** data.draw(st.floats(-1, 1), label="log10 k")
    it = _iters(backend)
    r0 = fastot.sinkhorn(C, a, b, eps=eps, max_iter=it, backend=backend)
    r1 = fastot.sinkhorn(C * s, a, b, eps=eps * s, max_iter=it, backend=backend)
    tol = _tol(C.dtype, it, scale * s, eps * s, *C.shape[1:]) * 10
    assert (r1.f - s * r0.f).abs().max() <= tol and (r1.g - s * r0.g).abs().max() <= tol
    assert (r1.plan() - r0.plan()).abs().max() <= tol / (eps * s)


@pytest.mark.parametrize("backend,device,run", _per_backend(_scaling, 30, 6))
def test_scaling_cost_and_eps_together(backend, device, run):
    run(backend, device)


def _marginals(backend, device, data):
    """err is the plan's L1 row-marginal violation; after a g-update the column marginals hold (balanced)."""
    _count(f"marginals[{backend}]")
    C, a, b, eps, scale = _problem(data, backend)
    k = data.draw(st.integers(1, _iters(backend)), label="iters")
    r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=k, backend=backend)
    P = r.plan().double()
    row_viol = (P.sum(2) - a.double()).abs().sum(1)
    col_viol = (P.sum(1) - b.double()).abs().sum(1)
    tol = 1e-4 if C.dtype == torch.float32 else 1e-9
    assert (row_viol - r.err.double()).abs().max() <= tol * (1 + row_viol.max())
    assert col_viol.max() <= tol * (1 + row_viol.max())


@pytest.mark.parametrize("backend,device,run", _per_backend(_marginals, 40, 8))
def test_plan_marginals_match_err(backend, device, run):
    run(backend, device)


# --------------------------------------------------------------------------- code-switch properties
@pytest.fixture(scope="module")
def cs_setup(minilm_tokenizer):
    pairs = [("river", "mto"), ("market", "soko"), ("water", "maji"), ("the river", "mtoni"), ("bread", "mkate"),
             ("the", "ile"), ("at the market", "sokoni"), ("children", "watoto")]
    lex = fastot.Lexicon.from_pairs({"sw": pairs, "ha": [("river", "kogi"), ("water", "ruwa")]}, minilm_tokenizer)
    words = ["the", "river", "market", "water", "bread", "at", "children", "a", "##s", "big", ",", "."]
    vocab = torch.tensor([minilm_tokenizer.convert_tokens_to_ids(w) for w in words])
    return lex, vocab, minilm_tokenizer


def _cs_batch(data, vocab, tok):
    B, L = data.draw(st.integers(1, 5), label="B"), data.draw(st.integers(1, 40), label="L")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1), label="seed"))
    ids = vocab[torch.randint(0, len(vocab), (B, L), generator=g)]
    lens = torch.randint(0, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lens[:, None]).long()
    cut = torch.randint(0, L + 1, (B,), generator=g)
    tt = ((torch.arange(L)[None] >= cut[:, None]) & (mask == 1)).long()
    ids = torch.where(mask == 1, ids, torch.full_like(ids, tok.pad_token_id))
    return ids, mask, tt


@settings(max_examples=40 if not LONG else 5000, deadline=None, derandomize=not LONG,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_codeswitch_properties_and_bit_identical_backends(cs_setup, data):
    lex, vocab, tok = cs_setup
    _count("codeswitch")
    ids, mask, tt = _cs_batch(data, vocab, tok)
    p = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="p")
    max_length = data.draw(st.one_of(st.none(), st.integers(0, 48)), label="max_length")
    step = data.draw(st.integers(0, 1000), label="step")
    langs = data.draw(st.sampled_from([["sw"], ["ha"], ["sw", "ha"]]), label="languages")
    outs = {}
    for be, _dev in (p_.values for p_ in CS_BACKENDS):
        if be == "triton" and data.draw(st.booleans(), label="run triton") is False:
            continue  # the interpreter is slow: about half the examples also run Triton
        if be == "triton":
            _count("codeswitch[triton]")
        cs = fastot.CodeSwitcher(lex, p=p, seed=7, languages=langs, backend=be)
        outs[be] = cs(ids, mask, tt, step=step, max_length=max_length)
    out = outs["torch"]
    for be, o in outs.items():  # bit-identical
        for name in ("input_ids", "attention_mask", "token_type_ids", "source_index", "n_switched", "n_words"):
            assert torch.equal(getattr(o, name), getattr(out, name)), (be, name)
    width = out.input_ids.shape[1]
    if max_length is not None:
        assert width == max_length
    else:
        assert width == int(out.attention_mask.sum(1).max()) if out.attention_mask.numel() else width == 0
    for r in range(ids.shape[0]):
        real = out.attention_mask[r] == 1
        src, seg = out.source_index[r][real], out.token_type_ids[r][real]
        for s in (0, 1):  # source positions never go back within a segment
            si = src[seg == s]
            assert (si[1:] >= si[:-1]).all()
        assert (out.source_index[r][~real] == -1).all()
    if p == 0.0 and max_length is None:  # the identity (padding dropped per row)
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            assert out.input_ids[r, :n].tolist() == ids[r, :n].tolist()
            assert out.source_index[r, :n].tolist() == list(range(n))
            assert int(out.n_switched[r].sum()) == 0


# --------------------------------------------------------------------------- independent oracles: POT
def _ragged_slice(C, a, b, k):
    i, j = a[k] > 0, b[k] > 0
    return C[k][i][:, j], a[k][i], b[k][j]


@_settings(25)
@given(data=st.data())
def test_reference_matches_pot_and_stays_within_the_lp_bound(data):
    """The float64 reference (the oracle of every backend) against two solvers no one here wrote: POT's
    log-domain Sinkhorn plan on each problem, and the exact LP (ot.emd2): EMD <= <P*, C> and the entropic value
    lies in [EMD, EMD + eps min(H(a), H(b))] (the KL term of the LP plan is a mutual information)."""
    ot = pytest.importorskip("ot")
    _count("reference_vs_pot_and_lp")
    C, a, b, eps, scale = _problem(data, "triton", dtype=torch.float64)  # small sizes: POT runs per problem
    eps = max(eps, 0.1 * scale)  # converged within 1,500 iterations (the reference loop runs them all)
    r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=1500, tol=1e-12, backend="torch")
    assert (r.err < 1e-11).all()
    P = r.plan()
    for k in range(C.shape[0]):
        Ck, ak, bk = _ragged_slice(C, a, b, k)
        Pk = torch.from_numpy(ot.bregman.sinkhorn_log(ak.numpy(), bk.numpy(), Ck.numpy(), eps, numItermax=5000,
                                                      stopThr=1e-13))
        i, j = a[k] > 0, b[k] > 0
        assert (P[k][i][:, j] - Pk).abs().max() <= 1e-6
        emd = float(ot.emd2(ak.numpy(), bk.numpy(), Ck.numpy()))
        ent = lambda w: float(-(w * w.log()).sum())  # noqa: E731
        assert emd - 1e-9 <= float(r.transport_cost[k]) <= float(r.value[k]) + 1e-9
        assert float(r.value[k]) <= emd + eps * min(ent(ak), ent(bk)) + 1e-7 * (1 + scale)
