"Properties of the bandit allocators (umc_nb.bandit): budget arithmetic, determinism, JSON state, learning, bad input."
import json, os
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from umc_nb.core import allocators, BudgetError, ParameterError, ShapeError, EmptyInputError, DuplicateIdError, UnknownNameError, UMCError
from umc_nb.bandit import (ThompsonAllocator, LinearThompsonAllocator, allocator_from_json, apportion, arm_rewards,
                           label_rewards, simulate, summarize, bench_bandit, match_arms)

NAMES = ['thompson', 'linear-thompson', 'size', 'uncertainty', 'uniform', 'epsilon-greedy', 'ucb']
slow = pytest.mark.skipif(not os.environ.get('UMC_SLOW'), reason='slow: set UMC_SLOW=1')


@st.composite
def clusters_and_budget(draw):
    "A clusters frame (1-12 arms, sizes 0-30, at least one sample) and a budget in [1, total]."
    k = draw(st.integers(1, 12))
    sizes = draw(st.lists(st.integers(0, 30), min_size=k, max_size=k).filter(lambda s: sum(s) > 0))
    unit = st.floats(0, 1, allow_nan=False)
    df = pd.DataFrame({'arm': [f'r1/s/{i}' for i in range(k)], 'space': 's', 'size': sizes,
                       'mean_score': draw(st.lists(unit, min_size=k, max_size=k)),
                       'novelty': draw(st.lists(unit, min_size=k, max_size=k)),
                       'affinity': draw(st.lists(unit, min_size=k, max_size=k)),
                       'members': [list(range(100 * i, 100 * i + s)) for i, s in enumerate(sizes)]})
    return df, draw(st.integers(1, sum(sizes)))


def _trained(name, df, seed):
    "An allocator that has seen one round of rewards on `df`."
    al = allocators.create(name, random_state=seed)
    a = al.allocate(df, max(1, int(df['size'].sum()) // 2))
    got = a[a > 0]
    al.update(got.index, np.linspace(0, 1, len(got)), counts=got.to_numpy())
    return al


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cb=clusters_and_budget(), seed=st.integers(0, 2**31 - 1))
def test_allocation_arithmetic(name, cb, seed):
    df, budget = cb
    out = _trained(name, df, seed).allocate(df, budget)
    assert isinstance(out, pd.Series) and list(out.index) == list(df['arm'])
    assert out.sum() == budget
    assert (out >= 0).all()
    assert (out.to_numpy() <= df['size'].to_numpy()).all()


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=20, deadline=None)
@given(cb=clusters_and_budget(), seed=st.integers(0, 2**31 - 1))
def test_deterministic_under_seed(name, cb, seed):
    df, budget = cb
    a = _trained(name, df, seed).allocate(df, budget)
    b = _trained(name, df, seed).allocate(df, budget)
    pd.testing.assert_series_equal(a, b)


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=20, deadline=None)
@given(cb=clusters_and_budget(), seed=st.integers(0, 2**31 - 1))
def test_json_round_trip(name, cb, seed):
    df, budget = cb
    al = _trained(name, df, seed)
    s = al.to_json()
    back = allocator_from_json(s)
    assert type(back) is type(al) and back.get_params() == al.get_params()
    assert json.loads(back.to_json()) == json.loads(s)
    pd.testing.assert_series_equal(back.allocate(df, budget), al.allocate(df, budget))   # same next allocation
    assert json.loads(back.to_json()) == json.loads(al.to_json())                        # and the same state after it


@settings(max_examples=50, deadline=None)
@given(w=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=10), data=st.data())
def test_apportion_is_proportional_within_caps(w, data):
    cap = data.draw(st.lists(st.integers(0, 20), min_size=len(w), max_size=len(w)).filter(lambda c: sum(c) > 0))
    budget = data.draw(st.integers(1, sum(cap)))
    out = apportion(w, cap, budget, np.random.default_rng(0))
    assert out.sum() == budget and (out >= 0).all() and (out <= np.array(cap)).all()
    w, cap = np.array(w), np.array(cap)
    if w[cap > 0].sum() > 0 and (cap >= budget).all():      # no cap binds: each count within one of its ideal share
        ideal = budget * w / w.sum()
        assert (np.abs(out - ideal) < 1 + 1e-9).all()


def test_bad_input():
    df = pd.DataFrame({'arm': ['a', 'b'], 'size': [3, 4], 'mean_score': [0.2, 0.5], 'novelty': [0.1, 0.9], 'affinity': [0.5, 0.5]})
    for name in NAMES:
        al = allocators.create(name, random_state=0)
        with pytest.raises(BudgetError, match='at least 1'): al.allocate(df, 0)
        with pytest.raises(BudgetError, match='larger than the 7'): al.allocate(df, 8)
        with pytest.raises(BudgetError): al.allocate(df, 2.5)
        with pytest.raises(EmptyInputError): al.allocate(df.iloc[:0], 1)
        with pytest.raises(DuplicateIdError): al.allocate(df.assign(arm=['a', 'a']), 1)
        with pytest.raises(ParameterError): al.allocate(df.assign(size=[-1, 4]), 1)
        with pytest.raises(ShapeError): al.allocate(df.drop(columns='size'), 1)
        with pytest.raises(ParameterError, match='beta'): allocators.create(name, beta=1.5).allocate(df, 1)
        with pytest.raises(ParameterError, match='beta'): allocators.create(name, beta=-0.1).allocate(df, 1)
        al.allocate(df, 2)
        with pytest.raises(UnknownNameError): al.update(['zz'], [0.5])
        with pytest.raises(ParameterError): al.update(['a'], [np.nan])
        with pytest.raises(ParameterError): al.update(['a'], [1.2])
        with pytest.raises(ShapeError): al.update(['a', 'b'], [0.5])
    with pytest.raises(ParameterError, match='NaN'): LinearThompsonAllocator().allocate(df.assign(novelty=[np.nan, 0.1]), 1)
    with pytest.raises(ParameterError, match='prior'): ThompsonAllocator(prior=(1, -1)).allocate(df, 1)
    with pytest.raises(ParameterError, match='discount'): ThompsonAllocator(discount=0).allocate(df, 1)
    with pytest.raises(ParameterError, match='match'): ThompsonAllocator(match='name').allocate(df, 1)
    with pytest.raises(ParameterError, match='beta'): label_rewards(['a'], ['b'], 0.5, beta=2)
    with pytest.raises(EmptyInputError): label_rewards([], [], 0.5)
    with pytest.raises(ShapeError): arm_rewards(['x'], ['a', 'b'], ['a', 'b'], 0.5)
    assert issubclass(BudgetError, UMCError) and issubclass(BudgetError, ValueError)


def test_one_member_cluster_and_exact_budget():
    df = pd.DataFrame({'arm': ['solo', 'big'], 'size': [1, 9], 'mean_score': [0.9, 0.1], 'novelty': [1.0, 0.0], 'affinity': [0.0, 1.0]})
    for name in NAMES:
        out = allocators.create(name, random_state=0).allocate(df, 10)        # budget = everything
        assert out.to_dict() == {'solo': 1, 'big': 9}


def test_share_of_best_arm_rises_fixed_seed():
    for al in (ThompsonAllocator(random_state=0), LinearThompsonAllocator(random_state=0)):
        s = summarize(simulate(al, rounds=10, budget=20, random_state=0))
        assert s['last_share'] >= 0.7 and s['last_share'] > s['first_share'] + 0.2, (type(al).__name__, s)


def test_matching_carries_belief_over_renamed_clusters():
    "Without matching, renamed clusters are new arms each round and the share of the best arm does not rise."
    with_m = summarize(simulate(ThompsonAllocator(random_state=0), rounds=10, budget=20, random_state=0))
    without = summarize(simulate(ThompsonAllocator(match=None, random_state=0), rounds=10, budget=20, random_state=0))
    assert with_m['cumulative_regret'] < without['cumulative_regret']
    assert with_m['last_share'] > without['last_share'] + 0.3


def test_linear_thompson_transfers_to_unseen_clusters():
    "After learning that novelty pays, brand-new clusters get budget by their features on their first round."
    rng = np.random.default_rng(0)
    lt = LinearThompsonAllocator(random_state=0)
    for t in range(6):
        df = pd.DataFrame({'arm': [f'r{t}/{i}' for i in range(6)], 'size': 50, 'mean_score': rng.uniform(0.3, 0.7, 6),
                           'novelty': rng.uniform(0, 1, 6), 'affinity': rng.uniform(0, 1, 6)})
        a = lt.allocate(df, 20)
        got = a[a > 0]
        lt.update(got.index, df.set_index('arm').loc[got.index, 'novelty'].to_numpy(), counts=got.to_numpy())
    fresh = pd.DataFrame({'arm': ['new/0', 'new/1', 'new/2', 'new/3'], 'size': 50, 'mean_score': 0.5,
                          'novelty': [0.95, 0.1, 0.2, 0.15], 'affinity': 0.5})
    out = lt.allocate(fresh, 20)
    assert out['new/0'] >= 15, out


def test_match_arms_member_split():
    old = pd.DataFrame({'arm': ['o'], 'space': 's', 'members': [list(range(10))]})
    new = pd.DataFrame({'arm': ['n0', 'n1', 'n2'], 'space': ['s', 's', 't'],
                        'members': [list(range(5)), list(range(5, 10)), list(range(10))]})
    assert match_arms(old, new) == {'n0': 'o', 'n1': 'o'}          # both halves inherit; another space never matches


def test_bench_json_shape(capsys):
    from umc_nb.cli import main
    assert main(['bench', 'bandit', '--seeds', '1', '--rounds', '3', '--json']) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(NAMES) <= set(d['allocators'])
    for v in d['allocators'].values():
        assert set(v) == {'first_share', 'last_share', 'cumulative_regret'} and 0 <= v['first_share'] <= 1


def test_bench_rejects_bad_beta(capsys):
    from umc_nb.cli import main
    assert main(['bench', 'bandit', '--seeds', '1', '--rounds', '2', '--beta', '2']) == 2


@slow
@pytest.mark.slow
def test_share_of_best_arm_rises_over_seeds():
    "Over 10 seeds (new pool each), Thompson and linear Thompson move the budget to the best arm and beat the fixed rules."
    for name in ['thompson', 'linear-thompson']:
        shares = []
        for seed in range(10):
            s = summarize(simulate(allocators.create(name, random_state=seed), rounds=12, budget=20, random_state=seed))
            shares.append(s)
        first = np.mean([s['first_share'] for s in shares]); last = np.mean([s['last_share'] for s in shares])
        assert last > 0.7 and last > first + 0.3, (name, first, last)
        assert sum(s['last_share'] > s['first_share'] for s in shares) >= 9, (name, shares)
    df = bench_bandit(seeds=10, rounds=12, budget=20, progress=False).set_index('allocator')
    for fixed in ['size', 'uniform', 'uncertainty']:
        assert df.loc['thompson', 'cumulative_regret'] < df.loc[fixed, 'cumulative_regret']
        assert df.loc['linear-thompson', 'cumulative_regret'] < df.loc[fixed, 'cumulative_regret']


def test_with_routing_output():
    "The allocators take the clusters frame of umc_nb.route as it is; member matching links round 2 to round 1."
    route_mod = pytest.importorskip('umc_nb.route')
    import warnings
    pool = route_mod.blob_pool(600, seed=0)
    rng = np.random.default_rng(0); scores = rng.random(len(pool))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r1 = route_mod.route(pool, scores, 30, round=1, embedder='pca', random_state=0)
        scores[rng.choice(len(pool), 50, replace=False)] = 0
        r2 = route_mod.route(pool, scores, 30, round=2, embedder='pca', random_state=0)
    for name in NAMES:
        al = allocators.create(name, random_state=0)
        a = al.allocate(r1.clusters, 30)
        assert a.sum() == 30 and (a.to_numpy() <= r1.clusters['size'].to_numpy()).all()
        al.update(a.index[a > 0], np.full(int((a > 0).sum()), 0.5), counts=a[a > 0])
        assert al.allocate(r2.clusters, 30).sum() == 30
        assert allocator_from_json(al.to_json()).get_params() == al.get_params()
        if name == 'thompson': assert len(al.links_) >= len(r2.clusters) // 2
