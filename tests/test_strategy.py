"UMCStrategy: hypothesis properties (k distinct, never labelled, deterministic), named errors, JSON round trip, same method as the Curator."
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from sklearn.linear_model import LogisticRegression

from umc_nb.core import UMCError, BudgetError, ShapeError, MaskError, ParameterError, UnknownLabelError, DuplicateIdError
from umc_nb.strategy import (UMCStrategy, NotQueriedError, as_pool, bootstrap_committee, committee_proba, score_table,
                             allocate_picks)
from umc_nb.route import Router
from umc_nb.bandit import allocators, arm_rewards

ROUTER = {'embedder': 'pca'}


def _probs(n, m=3, c=4, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c), size=(n, m)).astype(np.float32)
    return p / p.sum(-1, keepdims=True)


def _X(n, d=5, seed=0):
    return np.random.default_rng(seed + 100).normal(size=(n, d)).astype(np.float32)


pool_case = st.tuples(st.integers(12, 60), st.integers(0, 10_000), st.floats(0.0, 0.6), st.integers(1, 12))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_case)
def test_k_distinct_unlabelled_deterministic(case):
    n, seed, frac, k = case
    rng = np.random.default_rng(seed)
    labelled = rng.random(n) < frac
    free = int((~labelled).sum())
    k = min(k, free)
    if k == 0: return
    X, P = _X(n, seed=seed), _probs(n, seed=seed)
    a = UMCStrategy(router=ROUTER, random_state=seed).query(X, k, probs=P, labeled_mask=labelled)
    b = UMCStrategy(router=ROUTER, random_state=seed).query(X, k, probs=P, labeled_mask=labelled)
    assert len(a) == k and len(set(a.tolist())) == k
    assert not labelled[a].any()
    assert ((a >= 0) & (a < n)).all()
    assert a.tolist() == b.tolist()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(15, 50), st.integers(0, 1000), st.integers(1, 4))
def test_deterministic_over_rounds_with_updates(n, seed, rounds):
    "Two strategies with the same seed, fed the same labels, pick the same samples round after round."
    X, P = _X(n, seed=seed), _probs(n, seed=seed)
    truth = np.random.default_rng(seed).integers(0, 4, n)
    out = []
    for _ in range(2):
        s, labelled, picks = UMCStrategy(router=ROUTER, random_state=seed), np.zeros(n, bool), []
        for r in range(rounds):
            k = min(3, int((~labelled).sum()))
            if k == 0: break
            idx = s.query(X, k, probs=P, labeled_mask=labelled)
            assert not labelled[idx].any()
            labelled[idx] = True; s.update(idx, truth[idx]); picks.append(idx.tolist())
        out.append(picks)
    assert out[0] == out[1]


@settings(max_examples=30, deadline=None)
@given(st.integers(5, 40), st.one_of(st.integers(-5, 0), st.integers(1, 80)))
def test_bad_k_is_budget_error(n, k):
    X, P = _X(n), _probs(n)
    labelled = np.zeros(n, bool); labelled[: n // 2] = True
    free = n - n // 2
    s = UMCStrategy(router=ROUTER, random_state=0)
    if 1 <= k <= free: return
    with pytest.raises(BudgetError) as e: s.query(X, k, probs=P, labeled_mask=labelled)
    assert ('at least 1' in str(e.value)) if k <= 0 else (f'the {free} unlabelled' in str(e.value))
    assert not hasattr(s, 'pending_') or s.round_ == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(5, 40), st.integers(1, 60))
def test_probs_and_mask_length_mismatch(n, other):
    if other == n: return
    X = _X(n)
    s = UMCStrategy(router=ROUTER, random_state=0)
    with pytest.raises(ShapeError, match=f'probs has {other} rows but X_pool has {n}'):
        s.query(X, 1, probs=_probs(other))
    with pytest.raises(ShapeError, match='one flag per pool sample'):
        s.query(X, 1, probs=_probs(n), labeled_mask=np.zeros(other, bool))


@settings(max_examples=20, deadline=None)
@given(st.integers(12, 40), st.integers(0, 100), st.lists(st.integers(0, 39), min_size=1, max_size=5, unique=True))
def test_update_rejects_indices_not_queried(n, seed, extra):
    X, P = _X(n, seed=seed), _probs(n, seed=seed)
    s = UMCStrategy(router=ROUTER, random_state=seed)
    idx = s.query(X, 3, probs=P)
    bad = [i for i in extra if i < n and i not in set(idx.tolist())]
    if not bad: return
    state = s.to_json()
    with pytest.raises(NotQueriedError, match='were not returned by the last query'):
        s.update(bad, [0] * len(bad))
    assert s.to_json() == state                       # refused calls change nothing
    s.update(idx, [0, 1, 2])
    with pytest.raises(NotQueriedError, match='already rewarded'):
        s.update(idx[:1], [0])


def test_other_named_errors():
    n = 30; X, P = _X(n), _probs(n)
    s = UMCStrategy(router=ROUTER, random_state=0)
    with pytest.raises(NotQueriedError): s.update([0], [1])
    with pytest.raises(MaskError): s.query(X, 2, probs=P, labeled_mask=np.full(n, 2))
    with pytest.raises(ShapeError, match=r'\(N, M, C\)'): s.query(X, 2, probs=P.mean(1))
    with pytest.raises(ShapeError, match='one tag per pool sample'): s.query(X, 2, probs=P, domains=['a'])
    with pytest.raises(ParameterError, match='base_estimator'): s.query(X, 2)
    with pytest.raises(ParameterError, match='alpha'): UMCStrategy(alpha=2).query(X, 2, probs=P)
    with pytest.raises(ShapeError, match='classes names 3'): UMCStrategy(classes=['a', 'b', 'c']).query(X, 2, probs=P)
    idx = s.query(X, 3, probs=P)
    with pytest.raises(ShapeError, match='one label per index'): s.update(idx, [0])
    with pytest.raises(DuplicateIdError): s.update([idx[0], idx[0]], [0, 0])
    with pytest.raises(UnknownLabelError, match='classes='): s.update(idx[:1], ['cat'])
    with pytest.raises(UnknownLabelError): s.update(idx[:1], [7])           # only 4 columns
    for E in (BudgetError, ShapeError, NotQueriedError, MaskError, ParameterError, UnknownLabelError):
        assert issubclass(E, UMCError)


def test_dict_of_spaces_and_domains():
    rng = np.random.default_rng(0)
    Xd = {'img': rng.normal(size=(25, 6)), 'txt': rng.normal(size=(15, 3)) + 5}
    pool = as_pool(Xd)
    assert pool.rows('txt').tolist() == list(range(25, 40))
    P = _probs(40)
    dom = np.array(['a'] * 25 + ['b'] * 15)
    labelled = np.zeros(40, bool); labelled[[0, 1, 30]] = True
    s = UMCStrategy(router=ROUTER, random_state=0)
    idx = s.query(Xd, 6, probs=P, labeled_mask=labelled, domains=dom)
    q = s.last_query_
    assert set(q['space']) <= {'img', 'txt'}
    for _, row in q.iterrows():   # a pick's space is its row's space: clusters never mix spaces
        assert row['space'] == ('img' if row['idx'] < 25 else 'txt')
    assert set(q['dominant_domain']) <= {'a', 'b'}
    s.update(idx, [0] * 6)


def test_committee_per_space_and_cold_start():
    rng = np.random.default_rng(1)
    Xd = {'a': rng.normal(size=(40, 4)), 'b': rng.normal(size=(20, 3))}
    y = np.full(60, None, object)
    s = UMCStrategy(base_estimator=LogisticRegression(max_iter=200), router=ROUTER, random_state=0)
    idx = s.query(Xd, 5, y=y)                                  # no label at all: S = 0, spread by the bandit
    assert len(set(idx.tolist())) == 5 and (s.last_query_['score'] == 0).all()
    y[idx] = 0; s.update(idx, [0] * 5)
    y[[0, 1, 2, 3]] = [0, 1, 0, 1]                            # space 'a' gets two classes, 'b' none
    idx = s.query(Xd, 5, y=y)
    assert not np.isin(idx, np.flatnonzero(y != None)).any()  # noqa: E711
    sc = s.last_scores_
    assert np.allclose(sc[40:], 0.5 * 1.0, atol=1e-5)          # no model in 'b': uniform, S = α·1


def test_bootstrap_committee_stratified_and_seeded():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4)); y = np.repeat([0, 1, 2], 10)
    a = bootstrap_committee(LogisticRegression(max_iter=200), X, y, 4, random_state=3)
    b = bootstrap_committee(LogisticRegression(max_iter=200), X, y, 4, random_state=3)
    for m in a: assert list(m.classes_) == [0, 1, 2]
    Pa, ca = committee_proba(a, X); Pb, _ = committee_proba(b, X)
    assert np.array_equal(Pa, Pb) and ca == [0, 1, 2] and Pa.shape == (30, 4, 3)
    with pytest.raises(ParameterError, match='committee must be an integer'): bootstrap_committee(LogisticRegression(), X, y, 1)


def test_same_method_as_the_curator():
    "One query equals the Curator's route + allocate + top-S picks on the same scores; update equals its reward step."
    n = 80; X, P = _X(n, d=6, seed=5), _probs(n, seed=5)
    labelled = np.zeros(n, bool); labelled[:10] = True
    s = UMCStrategy(router=ROUTER, random_state=7)
    idx = s.query(X, 8, probs=P, labeled_mask=labelled)
    # by hand, the Curator's way (plan_round): score, Router(random_state, **router).route(..., known_domains), allocate
    pool = as_pool(X)
    S = score_table(P, 0.5)['score'].to_numpy()
    rt = Router(**{'random_state': 7, **ROUTER}).route(pool, S, budget=8, labelled=labelled,
                                                       known_domains=pool.domain[labelled], round=1)
    alloc = allocators.create('linear-thompson', beta=0.5, random_state=7)
    _, picks = allocate_picks(rt.clusters, alloc, 8)
    assert idx.tolist() == [i for a in picks for i in picks[a]]
    # reward (finish_round): arm_rewards over the labels, then allocator.update
    labels = np.arange(8) % 4
    q = s.last_query_
    ar = arm_rewards(q['arm'], q['prediction'], labels, q['novelty'], beta=0.5)
    alloc.update(ar['arm'], ar['reward'], ar['count'])
    s.update(idx, labels)
    assert np.allclose(s.allocator_.A_, alloc.A_) and np.allclose(s.allocator_.b_, alloc.b_)


def test_json_round_trip_continues_identically():
    n = 50; X, P = _X(n, seed=2), _probs(n, seed=2)
    truth = np.arange(n) % 4
    a = UMCStrategy(router=ROUTER, random_state=4, allocator='thompson')
    idx = a.query(X, 5, probs=P); a.update(idx[:3], truth[idx[:3]])    # two picks still pending
    b = UMCStrategy.from_json(a.to_json())
    assert json.loads(b.to_json()) == json.loads(a.to_json())
    a.update(idx[3:], truth[idx[3:]]); b.update(idx[3:], truth[idx[3:]])
    lab = np.zeros(n, bool); lab[idx] = True
    assert a.query(X, 5, probs=P, labeled_mask=lab).tolist() == b.query(X, 5, probs=P, labeled_mask=lab).tolist()
    assert a.reward_history().equals(b.reward_history())
    with pytest.raises(ParameterError, match='JSON'):
        UMCStrategy(router={'embedder': object()}).to_json()
