"Metrics (umc_nb.metrics) against scikit-learn, torchmetrics and SciPy, hypothesis properties, and bad input."
import math
import warnings
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, assume, strategies as st, HealthCheck
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from umc_nb.core import (UMCError, InvalidProbabilitiesError, ShapeError, EmptyInputError, ParameterError,
                         UnknownLabelError, UnknownNameError, DuplicateIdError)
from umc_nb.metrics import (InvalidValuesError, accuracy, macro_f1, f1_per_class, domain_scores, worst_domain,
                            domain_coverage, expected_calibration_error, classwise_ece, reliability_table,
                            reliability_chart, ood_auroc, aulc, labels_to_target, labels_to_fraction,
                            annotation_efficiency_gain, seed_summary, summarize_over_seeds, compare_strategies, _holm,
                            curve_metrics)

settings.register_profile('umc_metrics', deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('umc_metrics')

# ---------------------------------------------------------------- generators
@st.composite
def label_pairs(draw, max_n=60, max_c=6):
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = rng.integers(0, c, n)
    p = np.where(rng.random(n) < draw(st.floats(0, 1)), t, rng.integers(0, c, n))
    return t, p

@st.composite
def prob_sets(draw, max_n=200, max_c=6):
    "Random (N, C) probabilities (no confidence exactly 1) and integer targets."
    n, c = draw(st.integers(1, max_n)), draw(st.integers(2, max_c))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    conc = draw(st.sampled_from([0.1, 0.5, 1.0, 5.0]))
    p = rng.dirichlet(np.full(c, conc), size=n)
    p = 0.999 * p + 0.001 / c                          # keep confidences strictly below 1
    return rng.integers(0, c, n), p

@st.composite
def curves(draw, max_k=12):
    k = draw(st.integers(2, max_k))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = np.cumsum(rng.integers(1, 50, k)).astype(float)
    y = np.clip(np.sort(rng.uniform(0, 1, k)) + rng.normal(0, 0.05, k), 0, 1)
    return x, y

# ---------------------------------------------------------------- against scikit-learn
@given(label_pairs())
def test_accuracy_and_macro_f1_match_sklearn(tp):
    t, p = tp
    assert accuracy(t, p) == pytest.approx(accuracy_score(t, p))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average='macro', zero_division=0))
        labs = np.arange(8)
        assert macro_f1(t, p, labels=labs) == pytest.approx(f1_score(t, p, labels=labs, average='macro', zero_division=0))
        np.testing.assert_allclose(f1_per_class(t, p).to_numpy(), f1_score(t, p, average=None, zero_division=0))

def test_string_labels():
    t, p = ['cat', 'dog', 'dog', 'eel'], ['cat', 'dog', 'cat', 'dog']
    assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average='macro', zero_division=0))

@given(label_pairs(max_n=80), st.integers(0, 1000))
def test_domain_scores_match_sklearn_per_subset(tp, seed):
    t, p = tp
    d = np.random.default_rng(seed).choice(['a', 'b', 'c'], len(t))
    tab = domain_scores(t, p, d)
    for _, r in tab[tab.kind == 'domain'].iterrows():
        m = d == r.domain
        assert r.n == m.sum()
        assert r.accuracy == pytest.approx(accuracy_score(t[m], p[m]))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            assert r.macro_f1 == pytest.approx(f1_score(t[m], p[m], average='macro', zero_division=0))
    worst = tab[tab.kind == 'worst'].iloc[0]
    assert worst.accuracy == tab[tab.kind == 'domain'].accuracy.min()
    assert worst_domain(tab)[1] == worst.accuracy
    assert tab[tab.kind == 'overall'].accuracy.item() == pytest.approx(accuracy_score(t, p))

@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_ood_auroc_matches_sklearn_and_mann_whitney(n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, n_in).round(1), rng.normal(0.5, 1, n_out).round(1)     # rounding makes ties
    auc = ood_auroc(a, b)
    assert auc == pytest.approx(roc_auc_score(np.r_[np.zeros(n_in), np.ones(n_out)], np.r_[a, b]))
    u = stats.mannwhitneyu(b, a).statistic
    assert auc == pytest.approx(u / (n_in * n_out))

# ---------------------------------------------------------------- against torchmetrics
torch = pytest.importorskip('torch')
from torchmetrics.classification import MulticlassCalibrationError, BinaryCalibrationError

@given(prob_sets(), st.integers(1, 25), st.sampled_from(['l1', 'l2', 'max']))
def test_ece_matches_torchmetrics(ys, n_bins, norm):
    y, p = ys
    ref = MulticlassCalibrationError(num_classes=p.shape[1], n_bins=n_bins, norm=norm)(
        torch.tensor(p, dtype=torch.float64), torch.tensor(y, dtype=torch.long)).item()
    assert expected_calibration_error(y, p, n_bins=n_bins, norm=norm) == pytest.approx(ref, abs=1e-5)   # torchmetrics works in float32

@given(prob_sets(max_n=120, max_c=4), st.integers(1, 15))
def test_classwise_ece_matches_torchmetrics_binary(ys, n_bins):
    y, p = ys
    ref = np.mean([BinaryCalibrationError(n_bins=n_bins)(torch.tensor(p[:, c]), torch.tensor((y == c).astype(np.int64))).item()
                   for c in range(p.shape[1])])
    assert classwise_ece(y, p, n_bins=n_bins) == pytest.approx(ref, abs=1e-5)

def test_confidence_one_goes_to_last_bin():
    "Documented difference from torchmetrics: confidence exactly 1 shares the last bin."
    p = np.array([[1.0, 0.0], [0.95, 0.05]]); y = np.array([0, 1])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(abs(0.5 - 0.975))
    assert reliability_table(y, p, n_bins=10)['count'].tolist()[-1] == 2

# ---------------------------------------------------------------- against SciPy
def _results(rng, names=('random', 'entropy', 'umc'), seeds=6, shift=(0, .02, .08)):
    rows = []
    base = rng.normal(0.6, 0.03, seeds)
    for s, sh in zip(names, shift):
        for i in range(seeds): rows.append(dict(strategy=s, seed=i, acc=base[i] + sh + rng.normal(0, 0.01)))
    return pd.DataFrame(rows)

@given(st.integers(0, 2**32 - 1), st.integers(2, 9))
def test_compare_strategies_matches_scipy(seed, seeds):
    res = _results(np.random.default_rng(seed), seeds=seeds)
    out = compare_strategies(res, 'acc', baseline='random')
    g = {s: res[res.strategy == s].sort_values('seed').acc.to_numpy() for s in ('random', 'entropy', 'umc')}
    an = out[out.test == 'anova'].iloc[0]
    assert an.statistic == pytest.approx(stats.f_oneway(*g.values()).statistic)
    assert an.p_value == pytest.approx(stats.f_oneway(*g.values()).pvalue)
    for s in ('entropy', 'umc'):
        t = out[(out.test == 'paired_t') & (out.strategy == s)].iloc[0]
        ref = stats.ttest_rel(g[s], g['random'])
        assert (t.statistic, t.p_value) == pytest.approx((ref.statistic, ref.pvalue))
        d = g[s] - g['random']
        assert t.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
        w = out[(out.test == 'wilcoxon') & (out.strategy == s)].iloc[0]
        ref = stats.wilcoxon(g[s], g['random'])
        assert (w.statistic, w.p_value) == pytest.approx((ref.statistic, ref.pvalue))
        assert -1 <= w.effect_size <= 1
    assert (out.p_holm.dropna() >= out.p_value.dropna() - 1e-12).all()

def test_compare_all_pairs_and_order():
    res = _results(np.random.default_rng(0))
    out = compare_strategies(res, 'acc')
    pairs = out[out.test == 'paired_t'][['strategy', 'other']].values.tolist()
    assert pairs == [['random', 'entropy'], ['random', 'umc'], ['entropy', 'umc']]   # order of appearance

def test_compare_identical_strategies_gives_nan_not_error():
    res = pd.DataFrame(dict(strategy=['a'] * 3 + ['b'] * 3, seed=[0, 1, 2] * 2, acc=[.5, .6, .7] * 2))
    out = compare_strategies(res, 'acc')
    w = out[out.test == 'wilcoxon'].iloc[0]
    assert (math.isnan(w.p_value) or w.p_value == 1.0) and math.isnan(w.effect_size)   # SciPy version dependent
    assert out[out.test == 'paired_t'].mean_diff.item() == 0

def test_holm_by_hand():
    np.testing.assert_allclose(_holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(_holm(np.array([0.5, np.nan, 0.6])), [1.0, np.nan, 1.0])

@given(st.lists(st.floats(-100, 100), min_size=2, max_size=30), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_seed_summary_matches_scipy_t_interval(vals, conf):
    v = np.array(vals)
    assume(v.std() > 1e-6)
    s = seed_summary(v, confidence=conf)
    lo, hi = stats.t.interval(conf, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (s['ci_low'], s['ci_high']) == pytest.approx((lo, hi), rel=1e-9, abs=1e-9)
    assert s['std'] == pytest.approx(v.std(ddof=1))

def test_summarize_over_seeds():
    res = _results(np.random.default_rng(1))
    out = summarize_over_seeds(res, 'acc')
    assert list(out.columns[:3]) == ['strategy', 'metric', 'n'] and set(out.strategy) == {'random', 'entropy', 'umc'}
    assert out.text.str.contains('±').all()
    assert seed_summary([3.0])['n'] == 1 and math.isnan(seed_summary([3.0])['std'])

# ---------------------------------------------------------------- properties
@given(prob_sets(), st.integers(1, 30))
def test_ece_in_unit_interval(ys, n_bins):
    y, p = ys
    for norm in ('l1', 'l2', 'max'):
        assert 0 <= expected_calibration_error(y, p, n_bins=n_bins, norm=norm) <= 1
    assert 0 <= classwise_ece(y, p, n_bins=n_bins) <= 1
    # l1 <= l2 <= max (power means of the per-bin gaps)
    e1, e2, em = (expected_calibration_error(y, p, n_bins, n) for n in ('l1', 'l2', 'max'))
    assert e1 <= e2 + 1e-12 <= em + 2e-12

@settings(max_examples=10)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.integers(5, 20))
def test_ece_near_zero_when_calibrated(seed, c, n_bins):
    "Labels drawn from the predicted distribution: ECE shrinks to sampling noise."
    rng = np.random.default_rng(seed)
    n = 40_000
    p = rng.dirichlet(np.ones(c), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1).clip(0, c - 1)
    assert expected_calibration_error(y, p, n_bins=n_bins) < 0.03
    assert classwise_ece(y, p, n_bins=n_bins) < 0.03

@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 4))
def test_coverage_in_unit_interval(counts, extra):
    doms = [f'd{i}' for i in range(len(counts) + extra)]
    lab = np.repeat(doms[:len(counts)], counts)
    c = domain_coverage(lab, doms)
    assert 0 <= c <= 1
    if len(lab) and len(doms) > 1 and sum(x > 0 for x in counts) == 1: assert c == 0

@given(st.integers(1, 10), st.integers(1, 20))
def test_coverage_one_when_uniform(k, per):
    doms = [f'd{i}' for i in range(k)]
    assert domain_coverage(np.repeat(doms, per), doms * 3) == pytest.approx(1.0)

@given(st.lists(st.integers(1, 30), min_size=2, max_size=6), st.data())
def test_coverage_unvisited_domain_lowers_it(counts, data):
    doms = [f'd{i}' for i in range(len(counts))]
    lab = np.repeat(doms, counts)
    assert domain_coverage(lab, doms + ['new']) < domain_coverage(lab, doms) + 1e-12
    perm = data.draw(st.permutations(list(range(len(lab)))))
    assert domain_coverage(lab[perm], doms) == pytest.approx(domain_coverage(lab, doms))

@given(curves(), st.lists(st.floats(0, 0.5), min_size=12, max_size=12))
def test_aulc_monotone_under_dominance(c, lift):
    x, y = c
    y2 = y + np.array(lift[:len(y)])
    assert aulc(x, y2) >= aulc(x, y) - 1e-12
    assert y.min() - 1e-12 <= aulc(x, y) <= y.max() + 1e-12
    t = float(np.median(y))
    assert labels_to_target(x, y2, t) <= labels_to_target(x, y, t) + 1e-9

@given(curves(), st.floats(0.01, 0.99))
def test_labels_to_target_properties(c, target):
    x, y = c
    n = labels_to_target(x, y, target)
    if (y >= target).any():
        assert x[0] <= n <= x[-1]
        assert np.interp(n, x, y) == pytest.approx(target, abs=1e-9) or n == x[0]
    else:
        assert n == np.inf and labels_to_target(x, y, target, never='max') == x[-1]
    # AEG of a curve against itself is 0 where the target is reached, NaN otherwise
    g = annotation_efficiency_gain(x, y, x, y, target)
    assert (g == pytest.approx(0.0)) if (y >= target).any() else math.isnan(g)

@given(curves(), st.floats(1.1, 4))
def test_aeg_of_a_stretched_baseline(c, k):
    "A baseline that needs k times the labels for every accuracy gives AEG = 1 - 1/k."
    x, y = c
    y = np.maximum.accumulate(y)
    assume(y[-1] > y[0] + 1e-3)
    t = (y[0] + y[-1]) / 2
    assert annotation_efficiency_gain(x, y, k * x, y, t) == pytest.approx(1 - 1 / k)

def test_aulc_range_is_shared_by_interpolation():
    x1, y1 = [10, 30, 50], [0.5, 0.7, 0.8]
    x2, y2 = [10, 20, 30, 40, 50], np.interp([10, 20, 30, 40, 50], x1, y1)
    assert aulc(x1, y1, 10, 40) == pytest.approx(aulc(x2, y2, 10, 40))

# ---------------------------------------------------------------- bad input
P = np.array([[.7, .3], [.2, .8], [.5, .5]])

@pytest.mark.parametrize('call, err, msg', [
    (lambda: accuracy([0, 1, 1], [0, 1]), ShapeError, 'same length'),
    (lambda: accuracy([], []), EmptyInputError, 'empty'),
    (lambda: macro_f1([[0, 1]], [[0, 1]]), ShapeError, 'one-dimensional'),
    (lambda: domain_scores([0, 1], [0, 1], ['a', 'b', 'c']), ShapeError, 'domains has 3'),
    (lambda: domain_scores([0, 1], None, ['a', 'b']), ParameterError, 'pass y_pred'),
    (lambda: expected_calibration_error([0, 1], P), ShapeError, 'same length'),
    (lambda: expected_calibration_error([], np.zeros((0, 2))), EmptyInputError, 'empty'),
    (lambda: expected_calibration_error([0, 1, 0], P * 0.9), InvalidProbabilitiesError, 'do not sum to one'),
    (lambda: expected_calibration_error([0, 1, 0], -P), InvalidProbabilitiesError, 'negative'),
    (lambda: expected_calibration_error([0, 1, 0], np.full((3, 2), np.nan)), InvalidProbabilitiesError, 'NaN'),
    (lambda: expected_calibration_error([0, 1, 0], P[:, 0]), ShapeError, '(N, C)'),
    (lambda: expected_calibration_error([0, 1, 0], P, n_bins=0), ParameterError, 'n_bins'),
    (lambda: expected_calibration_error([0, 1, 0], P, n_bins=-3), ParameterError, 'n_bins'),
    (lambda: expected_calibration_error([0, 1, 0], P, n_bins=2.5), ParameterError, 'n_bins'),
    (lambda: expected_calibration_error([0, 1, 0], P, norm='l3'), ParameterError, 'norm'),
    (lambda: expected_calibration_error([0, 2, 0], P), UnknownLabelError, 'outside the 2 classes'),
    (lambda: expected_calibration_error(['a', 'b', 'a'], P), UnknownLabelError, 'class indices'),
    (lambda: classwise_ece([0, 1, 0], P, n_bins=0), ParameterError, 'n_bins'),
    (lambda: reliability_table([0, 1], P), ShapeError, 'same length'),
    (lambda: domain_coverage(['a'], []), EmptyInputError, 'pool_domains is empty'),
    (lambda: domain_coverage(['x'], ['a', 'b']), UnknownNameError, 'not in the pool'),
    (lambda: ood_auroc([0.1], []), EmptyInputError, 'out_scores is empty'),
    (lambda: ood_auroc([0.1, np.inf], [0.2]), InvalidValuesError, 'NaN or inf'),
    (lambda: aulc([1, 2], [0.5]), ShapeError, 'same length'),
    (lambda: aulc([2, 1], [0.5, 0.6]), InvalidValuesError, 'strictly increasing'),
    (lambda: aulc([1, 2], [0.5, np.nan]), InvalidValuesError, 'NaN'),
    (lambda: aulc([1], [0.5]), ParameterError, 'two or more'),
    (lambda: aulc([1, 2], [0.5, 0.6], lo=0), ParameterError, 'no extrapolation'),
    (lambda: labels_to_fraction([1, 2], [0.5, 0.6], 0.9, fraction=1.5), ParameterError, 'fraction'),
    (lambda: labels_to_fraction([1, 2], [0.5, 0.6], np.nan), InvalidValuesError, 'reference'),
    (lambda: annotation_efficiency_gain([1, 2], [.5, .6], [1, 2], [.5, .6], np.nan), InvalidValuesError, 'target'),
    (lambda: seed_summary([]), EmptyInputError, 'empty'),
    (lambda: seed_summary([1, 2], confidence=2), ParameterError, 'confidence'),
    (lambda: summarize_over_seeds(pd.DataFrame(dict(strategy=['a'], x=[1])), 'acc'), UnknownNameError, "no column 'acc'"),
    (lambda: compare_strategies(pd.DataFrame(dict(strategy=['a', 'a'], seed=[0, 1], acc=[.1, .2])), 'acc'), ParameterError, 'two strategies'),
    (lambda: compare_strategies(pd.DataFrame(dict(strategy=['a', 'b'], seed=[0, 0], acc=[.1, .2])), 'acc'), EmptyInputError, 'two seeds'),
    (lambda: compare_strategies(pd.DataFrame(dict(strategy=['a', 'a'], seed=[0, 0], acc=[.1, .2])), 'acc'), DuplicateIdError, 'one row per'),
    (lambda: compare_strategies(pd.DataFrame(dict(strategy=['a', 'b'] * 2, seed=[0, 0, 1, 1], acc=[.1, np.nan, .2, .3])), 'acc'), InvalidValuesError, 'NaN'),
    (lambda: compare_strategies(pd.DataFrame(dict(strategy=['a', 'b'], seed=[0, 0], acc=[.1, .2])), 'acc', seed='run'), UnknownNameError, "no column 'run'"),
])
def test_bad_input_raises_named_errors(call, err, msg):
    with pytest.raises(err, match=None) as e: call()
    assert isinstance(e.value, UMCError) and msg in str(e.value), str(e.value)

def test_missing_seeds_are_dropped_from_pairs():
    res = _results(np.random.default_rng(2), seeds=5)
    res = res[~((res.strategy == 'umc') & (res.seed == 4))]
    out = compare_strategies(res, 'acc')
    assert (out.n == 4).all()

# ---------------------------------------------------------------- chart renders
def test_reliability_chart_renders_png():
    vlc = pytest.importorskip('vl_convert')
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 300); y = rng.integers(0, 3, 300)
    tab = pd.concat([reliability_table(y, p, 8).assign(group='a'), reliability_table(y, p, 8).assign(group='b')])
    for ch in (reliability_chart(tab, title='t'), reliability_chart(reliability_table(y, p, 8))):
        png = vlc.vegalite_to_png(ch.to_dict())
        assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 2000

# ---------------------------------------------------------------- curve tables
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.floats(1.2, 3))
def test_curve_metrics_per_seed(seed, n_seeds, k):
    "A baseline needing k times the labels on every seed gives AEG 1 - 1/k on every seed."
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_seeds):
        x = np.cumsum(rng.integers(5, 20, 8)).astype(float)
        y = np.linspace(0.3, 0.9, 8) + rng.uniform(0, 0.01, 8)
        y = np.maximum.accumulate(y)
        rows += [dict(strategy='umc', seed=s, labels=a, accuracy=b) for a, b in zip(x, y)]
        rows += [dict(strategy='random', seed=s, labels=k * a, accuracy=b) for a, b in zip(x, y)]
    cm = curve_metrics(pd.DataFrame(rows), reference=0.6 / 0.95, baseline='random')
    assert len(cm) == 2 * n_seeds and {'aulc', 'labels_to_95', 'final_accuracy', 'aeg'} <= set(cm.columns)
    np.testing.assert_allclose(cm[cm.strategy == 'umc'].aeg, 1 - 1 / k, atol=1e-9)
    np.testing.assert_allclose(cm[cm.strategy == 'random'].aeg, 0, atol=1e-12)
    assert (cm.aulc_lo == cm.aulc_lo.iloc[0]).all()

def test_curve_metrics_bad_input():
    cv = pd.DataFrame(dict(strategy=['a', 'a'], seed=[0, 0], labels=[1, 2], accuracy=[.5, .6]))
    with pytest.raises(UnknownNameError, match="no column 'acc'"): curve_metrics(cv, 0.9, score='acc')
    with pytest.raises(EmptyInputError): curve_metrics(cv.iloc[:0], 0.9)
    with pytest.raises(UnknownNameError, match='no curve for baseline'): curve_metrics(cv, 0.9, baseline='b')
    two = pd.concat([cv, cv.assign(strategy='b', labels=[5, 6])])
    with pytest.raises(ParameterError, match='no extrapolation'): curve_metrics(two, 0.9)   # ranges do not overlap
