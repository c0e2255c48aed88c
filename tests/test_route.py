"Properties of routing (umc_nb.route): partition, labelled never routed, one space per cluster, determinism; bad input."
import os, warnings
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from umc_nb.core import UMCError, BudgetError, ShapeError, ParameterError, EmptyInputError, UnknownNameError
from umc_nb.route import (route, Router, blob_pool, select_candidates, dynamic_threshold, domain_stats,
                          InvalidScoresError, RoutingWarning, CLUSTER_COLUMNS)

slow = pytest.mark.skipif(not os.environ.get('UMC_SLOW'), reason='slow (UMAP compile); set UMC_SLOW=1')
POOLS = {seed: blob_pool(240, dims={'a': 6, 'b': 4, 'c': 3}, seed=seed) for seed in range(3)}


@st.composite
def rounds(draw):
    "A pool, scores (with ties), a labelled mask, a budget and router options."
    pool = POOLS[draw(st.integers(0, 2))]
    n = len(pool)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ties = draw(st.booleans())
    S = rng.integers(0, 5, n).astype(float) if ties else rng.random(n)
    labelled = rng.random(n) < draw(st.floats(0, 0.8))
    free = int((~labelled).sum())
    if free == 0: labelled[0] = False; free = 1
    budget = draw(st.integers(1, max(1, min(free, 40))))
    opts = dict(embedder='pca', clusterer=draw(st.sampled_from(['kmeans', 'hdbscan'])),
                rule=draw(st.sampled_from(['quantile', 'budget', 'both'])), q=draw(st.floats(0.5, 1.0)),
                factor=draw(st.floats(1, 5)), k=draw(st.one_of(st.none(), st.integers(1, 60))),
                random_state=seed, sample_size=draw(st.integers(5, 300)))
    return pool, S, labelled, budget, opts


def _route(pool, S, labelled, budget, opts):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RoutingWarning)
        return route(pool, S, budget, labelled=labelled, **opts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_routing_properties(case):
    pool, S, labelled, budget, opts = case
    rt = _route(pool, S, labelled, budget, opts)
    cl = rt.clusters
    assert list(cl.columns) == CLUSTER_COLUMNS
    assert set(cl['kind']) <= {'uncertain', 'explore'}
    unc, exp = cl[cl['kind'] == 'uncertain'], cl[cl['kind'] == 'explore']
    members = np.concatenate(cl.members.tolist())
    # the uncertain arms partition the candidates; explore arms hold other unlabelled samples, one arm per space at most,
    # only in spaces without a candidate (the default 'fallback'); no sample is in two arms
    um = np.concatenate(unc.members.tolist()) if len(unc) else np.zeros(0, int)
    assert len(um) == len(set(um.tolist())) == len(rt.candidates) and set(um.tolist()) == set(rt.candidates.tolist())
    assert len(members) == len(set(members.tolist())) and set(members.tolist()) == set(rt.assignment.index)
    assert exp.space.is_unique and not set(exp.space) & set(pool.space[rt.candidates])
    for m in exp.members: assert 1 <= len(m) <= budget
    assert (cl['size'] == cl.members.map(len)).all() and (cl['size'] >= 1).all()
    for arm, m in zip(cl.arm, cl.members): assert (rt.assignment.loc[m] == arm).all()
    # labelled samples are never routed; enough candidates for the budget
    assert not labelled[members].any()
    assert len(rt.candidates) >= budget
    # clusters stay within one feature space; members are sorted by score, highest first
    for sp, m in zip(cl.space, cl.members):
        assert set(pool.space[m]) == {sp}
    for m in unc.members: assert (np.diff(S[m]) <= 0).all()
    assert cl.arm.is_unique
    assert ((cl.affinity >= 0) & (cl.affinity <= 1) & (cl.novelty >= 0) & (cl.novelty <= 1)).all()
    np.testing.assert_allclose(cl.mean_score, [S[m].mean() for m in cl.members])
    np.testing.assert_allclose(cl.max_score, [S[m].max() for m in cl.members])
    # determinism under the seed
    rt2 = _route(pool, S, labelled, budget, opts)
    pd.testing.assert_frame_equal(rt2.clusters.drop(columns='centroid'), cl.drop(columns='centroid'))
    for a, b in zip(rt2.clusters.centroid, cl.centroid): np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=200), st.data())
def test_threshold_gives_enough_candidates(values, data):
    s = np.array(values)
    budget = data.draw(st.integers(1, len(s)))
    factor = data.draw(st.floats(1, 4))
    q = data.draw(st.floats(0, 1))
    for rule in ('budget', 'both'):
        t = dynamic_threshold(s, budget, rule, q, factor)
        assert (s >= t).sum() >= min(len(s), int(np.ceil(factor * budget)))
    assert dynamic_threshold(s, budget, 'both', q, factor) <= dynamic_threshold(s, budget, 'quantile', q, factor)


def test_no_candidate_above_tau_falls_back_to_top_b():
    S = np.linspace(0, 1, 50)
    with pytest.warns(RoutingWarning, match='no unlabelled sample scores at or above'):
        cand, tau = select_candidates(S, 5, tau=2.0)
    assert cand.tolist() == [45, 46, 47, 48, 49]
    with pytest.warns(RoutingWarning, match='fewer than the budget'):
        cand, _ = select_candidates(S, 5, tau=0.97)
    assert len(cand) == 5
    # ties at the cut are broken by pool index
    with pytest.warns(RoutingWarning):
        cand, _ = select_candidates(np.ones(10), 3, tau=5)
    assert cand.tolist() == [0, 1, 2]


def test_bad_input():
    pool = POOLS[0]
    S = np.random.default_rng(0).random(len(pool))
    with pytest.raises(InvalidScoresError, match='NaN or inf'): route(pool, np.where(np.arange(len(pool)) == 3, np.nan, S), 5, embedder='pca')
    with pytest.raises(InvalidScoresError): route(pool, np.where(np.arange(len(pool)) == 3, np.inf, S), 5, embedder='pca')
    assert issubclass(InvalidScoresError, UMCError) and issubclass(InvalidScoresError, ValueError)
    with pytest.raises(BudgetError, match='at least 1'): route(pool, S, 0, embedder='pca')
    with pytest.raises(BudgetError, match='larger than'): route(pool, S, len(pool) + 1, embedder='pca')
    with pytest.raises(BudgetError, match='larger than'): route(pool, S, len(pool), labelled=[0], embedder='pca')
    with pytest.raises(ShapeError): route(pool, S[:-1], 5, embedder='pca')
    with pytest.raises(ShapeError): route(pool, S, 5, labelled=np.zeros(3, bool), embedder='pca')
    with pytest.raises(ShapeError): route(pool, S, 5, labelled=[0, 1], known_domains=['x'], embedder='pca')
    with pytest.raises(EmptyInputError): route(pool, S, 5, labelled=np.ones(len(pool), bool), embedder='pca')
    with pytest.raises(ParameterError): route(pool, S, 5, embedder='pca', k=0)
    with pytest.raises(ParameterError): route(pool, S, 5, embedder='pca', q=1.5)
    with pytest.raises(ParameterError): route(pool, S, 5, embedder='pca', sample_size=0)
    with pytest.raises(UnknownNameError): route(pool, S, 5, clusterer='dbscan-typo')


def test_k_clipped_and_one_member_clusters():
    pool = POOLS[1]
    S = np.zeros(len(pool)); S[[0, 1, 2]] = 1       # three top samples, one per space (spaces cycle a, b, c)
    with pytest.warns(RoutingWarning, match='clipped'):
        rt = route(pool, S, 3, embedder='pca', tau=0.5, k=10)
    assert sorted(rt.clusters['size']) == [1, 1, 1] and rt.clusters.space.nunique() == 3
    assert sum('single member' in n for n in rt.notes) == 3
    # two candidates in one space, merged
    rt = route(pool, S, 3, embedder='pca', tau=0.5, k=1, merge_singletons=True)
    assert rt.clusters['size'].tolist() == [1, 1, 1]    # different spaces: never merged across spaces
    S2 = np.zeros(len(pool)); S2[[0, 3]] = 1            # two candidates in space a
    rt = route(pool, S2, 2, embedder='pca', tau=0.5, k=2, explore='off')
    assert rt.clusters['size'].tolist() == [1, 1]
    rt = route(pool, S2, 2, embedder='pca', tau=0.5, k=2, merge_singletons=True, explore='off')
    assert rt.clusters['size'].tolist() == [2]
    rt = route(pool, S2, 2, embedder='pca', tau=0.5, k=2)   # spaces b and c have no candidate: an explore arm each
    assert rt.clusters.query("kind == 'explore'").space.tolist() == sorted(set(pool.space) - {pool.space[0]})


def test_affinity_novelty_conventions():
    ds = domain_stats(np.zeros((0, 2)), [], [[0, 0], [5, 5]])
    assert ds.affinity.tolist() == [0.0, 0.0] and ds.novelty.tolist() == [1.0, 1.0]
    ref = np.array([[0, 0], [2, 0], [0, 2], [2, 2.]])
    ds = domain_stats(ref, ['a'] * 4, [[1, 1], [1, 2], [1, 4], [1, 100]])
    assert ds.novelty.is_monotonic_increasing and ds.affinity.is_monotonic_decreasing
    assert ds.novelty[0] == 0 and ds.affinity[0] == 1
    # a single labelled sample: its domain borrows a spread, novelty is still defined
    ds = domain_stats(np.array([[0, 0.]]), ['a'], [[0, 0], [3, 4]])
    assert ds.novelty[0] == 0 and 0 < ds.novelty[1] <= 1


def test_unlabelled_domain_is_novel():
    pool = blob_pool(600, dims={'a': 16}, seed=3)
    new = pool.domain == 'a-d2'
    rng = np.random.default_rng(0)
    S = np.where(new, rng.beta(4, 2, len(pool)), rng.beta(2, 3, len(pool)))
    lab = np.flatnonzero(~new & (rng.random(len(pool)) < 0.3))
    rt = route(pool, S, 30, labelled=lab, embedder='pca', q=0.7, random_state=0)
    cl = rt.clusters
    is_new = cl.dominant_domain == 'a-d2'
    assert is_new.any() and (~is_new).any()
    assert cl[is_new].novelty.min() > cl[~is_new].novelty.max()
    assert cl[is_new].affinity.max() < cl[~is_new].affinity.min()


def test_scores_dataframe_and_user_objects():
    from sklearn.decomposition import TruncatedSVD
    from sklearn.cluster import AgglomerativeClustering
    pool = POOLS[2]
    S = np.random.default_rng(1).random(len(pool))
    df = pd.DataFrame({'id': pool.ids, 'score': S})
    a = route(pool, df, 10, embedder=TruncatedSVD(2, random_state=0), clusterer=AgglomerativeClustering(n_clusters=2))
    b = route(pool, S, 10, embedder=TruncatedSVD(2, random_state=0), clusterer=AgglomerativeClustering(n_clusters=2))
    pd.testing.assert_frame_equal(a.clusters.drop(columns='centroid'), b.clusters.drop(columns='centroid'))
    assert a.clusters.groupby('space').size().max() <= 3   # n_clusters set by the k rule on a clone


@slow
def test_umap_determinism_and_sampling():
    pool = blob_pool(1500, dims={'a': 32, 'b': 16}, seed=0)
    S = np.random.default_rng(0).random(len(pool))
    kw = dict(labelled=np.arange(0, 1500, 7), sample_size=60, q=0.8, random_state=5)
    a, b = route(pool, S, 20, **kw), route(pool, S, 20, **kw)
    pd.testing.assert_frame_equal(a.clusters.drop(columns='centroid'), b.clusters.drop(columns='centroid'))
    assert a.fit_sample == {'a': 60, 'b': 60}
    assert sorted(np.concatenate(a.clusters.members.tolist()).tolist()) == a.candidates.tolist()


def test_max_candidates_keeps_the_highest():
    S = np.arange(100, dtype=float) % 37
    cand, tau = select_candidates(S, 5, rule='quantile', q=0.5, max_candidates=10)
    assert len(cand) == 10 and S[cand].min() >= np.sort(S)[-10]
    cand, _ = select_candidates(S, 20, rule='quantile', q=0.5, max_candidates=10)   # never below the budget
    assert len(cand) == 20
