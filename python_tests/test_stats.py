"""Paired randomization test and Holm's correction, against scipy's permutation test and statsmodels' Holm."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastot.ir.stats import holm, paired_randomization_test

scipy_stats = pytest.importorskip("scipy.stats")
multitest = pytest.importorskip("statsmodels.stats.multitest")

scores = st.lists(st.sampled_from([0.0, 0.1, 0.2, 1 / 3, 0.5, 1.0]), min_size=2, max_size=11)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_exact_p_equals_scipys_paired_permutation_test(data):
    a = data.draw(scores)
    b = data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.2, 1 / 3, 0.5, 1.0]), min_size=len(a), max_size=len(a)))
    mine = paired_randomization_test(a, b)
    if np.allclose(a, b):
        assert mine["p"] == 1.0
        return
    ref = scipy_stats.permutation_test((np.array(a), np.array(b)), lambda x, y: np.mean(x - y),
                                       permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert mine["exact"] and mine["p"] == pytest.approx(min(1.0, ref.pvalue), abs=1e-12)
    assert mine["diff"] == pytest.approx(np.mean(np.subtract(a, b)))


def test_sampled_p_agrees_with_scipy_and_is_never_zero():
    rng = np.random.default_rng(3)
    a = rng.random(60)
    b = a - 0.08 + 0.3 * rng.standard_normal(60)
    mine = paired_randomization_test(a, b, n_resamples=20_000, seed=1)
    ref = scipy_stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                       n_resamples=20_000, alternative="two-sided", rng=2)
    assert not mine["exact"] and abs(mine["p"] - ref.pvalue) < 0.02
    far = paired_randomization_test(np.ones(200), np.zeros(200) + 0.01 * rng.random(200), n_resamples=500)
    assert far["p"] == 1 / 501  # the observed sign pattern always counts
    assert paired_randomization_test(a, b, n_resamples=999, seed=5)["p"] == \
        paired_randomization_test(a, b, n_resamples=999, seed=5)["p"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=0, max_size=25))
def test_holm_equals_statsmodels_and_skips_nan(ps):
    got = np.array(holm(ps))
    p = np.array(ps, dtype=float)
    ok = ~np.isnan(p)
    assert np.isnan(got[~ok]).all()
    if ok.any():
        ref = multitest.multipletests(p[ok], method="holm")[1]
        np.testing.assert_allclose(got[ok], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("args, match", [
    (([1, 2], [1]), "a, b"), (([[1]], [[1]]), "a, b"), (([1, float("nan")], [1, 2]), "finite"),
])
def test_bad_input_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        paired_randomization_test(*args)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_randomization_test([1, 2], [2, 1], n_resamples=0)
    with pytest.raises(ValueError, match="pvalues"):
        holm([0.5, 1.5])


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    from fastot.experiments import bootstrap_ci

    rng = np.random.default_rng(0)
    x = (rng.random(80) < 0.3) / rng.integers(1, 11, 80)  # MRR-like: 0 or 1/rank
    lo, hi = bootstrap_ci(x, n_boot=20_000)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", rng=1).confidence_interval
    assert abs(lo - ref.low) < 0.01 and abs(hi - ref.high) < 0.01 and lo < x.mean() < hi
    assert np.isnan(bootstrap_ci([])).all()
