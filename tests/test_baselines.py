"Query strategies (umc_nb.baselines): k distinct unlabelled indices, determinism under a seed, agreement with peers, bad input."
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from umc_nb.core import UMCError, BudgetError, UnknownNameError
from umc_nb.loop import SelectionContext
from umc_nb.route import blob_pool
from umc_nb.scores import score
from umc_nb.baselines import (strategies, get_strategy, split_budget, k_center_greedy, typiclust_select, kmeans_pp,
                              gradient_embedding, top_k, PEER_STRATEGIES, PeerMissingError, Strategy)

settings.register_profile('umc_baselines', deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('umc_baselines')

try:
    import skactiveml, modAL  # noqa: F401
    HAVE_PEERS = True
except ImportError: HAVE_PEERS = False
OURS = [n for n in strategies.names() if n not in PEER_STRATEGIES]

def make_ctx(n=120, n_labelled=20, k=8, seed=0, members=3):
    "A synthetic context: a two-space blob pool, Dirichlet member probabilities, the score table."
    pool = blob_pool(n, seed=seed)
    rng = np.random.default_rng(seed)
    C = len(pool.labels)
    probs = rng.dirichlet(np.full(C, 0.4), size=(n, members)).astype(np.float32)
    mask = np.ones((n, members), bool); mask[:n // 4, -1] = False
    table = score(probs, mask).to_frame(ids=pool.ids, alpha=0.5)
    lab = np.zeros(n, bool); lab[rng.choice(n, n_labelled, replace=False)] = True
    return SelectionContext(pool, table, probs, mask, lab, k, 1, seed)

@pytest.mark.parametrize('name', OURS + (PEER_STRATEGIES if HAVE_PEERS else []))
def test_k_distinct_unlabelled_and_deterministic(name):
    ctx = make_ctx()
    a = get_strategy(name)(ctx)
    assert len(a) == ctx.k and len(set(a.tolist())) == ctx.k
    assert not ctx.labelled[a].any() and ((0 <= a) & (a < len(ctx.labelled))).all()
    assert a.tolist() == get_strategy(name)(ctx).tolist()          # same seed, same picks

@pytest.mark.parametrize('name', ['random', 'coreset', 'typiclust', 'badge'])
def test_seed_changes_randomised_strategies(name):
    from dataclasses import replace
    ctx = make_ctx(n_labelled=0)
    picks = {tuple(sorted(get_strategy(name)(replace(ctx, random_state=s)).tolist())) for s in range(4)}
    assert len(picks) > 1 or name in ('coreset',)                 # coreset only uses the seed for its first pick

@given(n_lab=st.integers(0, 100), k=st.integers(1, 20), seed=st.integers(0, 1000))
def test_property_any_budget(n_lab, k, seed):
    ctx = make_ctx(n_labelled=n_lab, k=k, seed=seed)
    for name in ['random', 'margin', 'coreset', 'typiclust', 'badge']:
        a = get_strategy(name)(ctx)
        assert len(set(a.tolist())) == k and not ctx.labelled[a].any()

def test_whole_unlabelled_pool():
    ctx = make_ctx(n_labelled=100, k=20)
    for name in OURS: assert sorted(get_strategy(name)(ctx).tolist()) == sorted(np.flatnonzero(~ctx.labelled).tolist())

def test_uncertainty_picks_are_the_top():
    ctx = make_ctx()
    free = ~ctx.labelled
    for name, col, sign in [('least-confident', 'least_confidence', 1), ('margin', 'margin', -1), ('entropy', 'entropy', 1),
                            ('bald', 'disagreement', 1), ('score', 'score', 1)]:
        v = sign * ctx.table[col].to_numpy()
        got = get_strategy(name)(ctx)
        assert v[got].min() >= np.sort(v[free])[::-1][ctx.k - 1] - 1e-9

def test_split_budget():
    assert split_budget([10, 5, 1], 8).tolist() == [5, 3, 0]
    assert split_budget([3, 0, 1], 4).tolist() == [3, 0, 1]
    with pytest.raises(BudgetError): split_budget([1, 1], 3)

def test_k_center_and_kmeanspp():
    X = np.array([[0.], [1.], [2.], [10.], [11.], [5.]])
    assert k_center_greedy(X, np.array([0]), np.arange(1, 6), 3).tolist() == [4, 5, 2]
    G = gradient_embedding(np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]), np.ones((3, 2)))
    assert kmeans_pp(G, np.arange(3), 1, np.random.default_rng(0)).tolist() == [1]      # the longest gradient first

def test_typiclust_covers_uncovered_blob():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, .1, (30, 2)), rng.normal(5, .1, (10, 2))]
    assert typiclust_select(X, np.array([0]), np.arange(1, 40), 1)[0] >= 30

def test_bad_input():
    ctx = make_ctx()
    from dataclasses import replace
    with pytest.raises(UnknownNameError, match='no query strategy named'): get_strategy('nope')
    with pytest.raises(BudgetError, match='larger than'): get_strategy('random')(replace(ctx, k=10_000))
    with pytest.raises(BudgetError, match='whole number'): get_strategy('random')(replace(ctx, k=1.5))
    class Bad(Strategy):
        name = 'bad'
        def select(self, ctx, free, k): return free[:1].repeat(k)
    with pytest.raises(UMCError, match='distinct unlabelled'): Bad()(ctx)
    with pytest.raises(Exception): top_k(np.full(len(ctx.labelled), np.nan), np.arange(3), 2)

@pytest.mark.skipif(not HAVE_PEERS, reason='scikit-activeml / modAL not installed (pip install umc_nb[peers])')
def test_peers_agree_with_ours():
    for seed in range(3):
        ctx = make_ctx(seed=seed)
        for ours, peer in [('entropy', 'modal-entropy'), ('least-confident', 'modal-uncertainty'),
                           ('least-confident', 'skactiveml-least-confident'), ('entropy', 'skactiveml-entropy'),
                           ('margin', 'modal-margin'), ('coreset', 'skactiveml-coreset')]:
            assert set(get_strategy(ours)(ctx).tolist()) == set(get_strategy(peer)(ctx).tolist()), (ours, peer, seed)

def test_peer_missing_is_named(monkeypatch):
    import builtins
    real = builtins.__import__
    def fake(name, *a, **kw):
        if name.startswith(('modAL', 'skactiveml')): raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, '__import__', fake)
    import importlib, sys
    for m in [m for m in sys.modules if m.startswith(('modAL', 'skactiveml'))]: monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(importlib, 'import_module', lambda name, *a: fake(name))
    with pytest.raises(PeerMissingError, match='umc_nb\\[peers\\]'): get_strategy('modal-entropy')(make_ctx())

@pytest.mark.slow
def test_through_the_loop(tmp_path):
    from umc_nb.data import load_benchmark
    from umc_nb.loop import Curator
    bm = load_benchmark(fixture=True)
    for name in ['coreset', 'badge']:
        cur = Curator.from_benchmark(bm, tmp_path / f'{name}.sqlite', budget=10, strategy=get_strategy(name),
                                     train={'max_epochs': 3}, progress=False)
        res = cur.run_round()
        assert res.labels == 10 and list(res.allocation) == [f'r1/{name}']
