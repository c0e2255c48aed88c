"Tests of umc_nb.ensemble: adapters, label-space alignment, masks, the Lightning predict path, bad input."
import os, subprocess, sys, textwrap
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.linear_model import LogisticRegression

from umc_nb.core import (MaskError, ShapeError, InvalidProbabilitiesError, UnknownLabelError, DuplicateIdError,
                         UnknownNameError, ParameterError, EmptyInputError, UMCError, specialists)
from umc_nb.ensemble import (Ensemble, MemberError, from_sklearn, from_torch, from_lightning, align_probs, class_columns,
                             label_index, SklearnMember, TorchMember, LightningMember)
from umc_nb.scores import reference_scores

slow = pytest.mark.skipif(not os.environ.get('UMC_SLOW'), reason='slow: set UMC_SLOW=1')


class ToyPool:
    "Minimal stand-in for umc_nb.data.Pool."
    def __init__(self, ids, domain, space, task, features, tasks):
        self.ids, self.domain, self.space, self.task = (np.asarray(a) for a in (ids, domain, space, task))
        self.features, self.tasks = features, tasks
    def __len__(self): return len(self.ids)
    def rows(self, space): return np.flatnonzero(self.space == space)
    def X(self, space, idx=None):
        if idx is None: return self.features[space]
        return self.features[space][np.searchsorted(self.rows(space), idx)]
    @property
    def labels(self): return [f'{t}:{c}' for t in self.tasks for c in self.tasks[t]]


def make_pool(seed=0, n_a=120, n_b=60):
    "Two spaces interleaved: 'sa' (task 'ta', 4 classes, d=5) and 'sb' (task 'tb', 3 classes, d=3)."
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    space = np.array(['sa'] * n_a + ['sb'] * n_b)[rng.permutation(n)]
    task = np.where(space == 'sa', 'ta', 'tb')
    feats = {'sa': rng.standard_normal(((space == 'sa').sum(), 5)).astype(np.float32),
             'sb': rng.standard_normal(((space == 'sb').sum(), 3)).astype(np.float32)}
    return ToyPool([f'x/{i:04d}' for i in range(n)], np.where(space == 'sa', 'A', 'B'), space, task, feats,
                   {'ta': ['0', '1', '2', '3'], 'tb': ['u', 'v', 'w']})


@pytest.fixture(scope='module')
def pool(): return make_pool()


def fit_lr(pool, space, classes, seed=0):
    rng = np.random.default_rng(seed)
    X = pool.X(space)
    y = np.asarray(classes)[rng.integers(0, len(classes), len(X))]
    return LogisticRegression(max_iter=200).fit(X, y)


class LitLinear(__import__('lightning').pytorch.LightningModule):
    def __init__(self, d, c, seed=0):
        super().__init__(); torch.manual_seed(seed); self.lin = torch.nn.Linear(d, c)
    def forward(self, x): return self.lin(x)


@pytest.fixture(scope='module')
def members(pool):
    torch.manual_seed(0)
    return dict(
        lr_a=from_sklearn(fit_lr(pool, 'sa', ['0', '1', '2']), 'sa', 'ta', name='lr_a'),          # knows a subset
        lr_b=from_sklearn(fit_lr(pool, 'sb', ['u', 'v', 'w']), 'sb', 'tb', name='lr_b'),
        t_a=from_torch(torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)), 'sa', 'ta',
                       classes=['ta:3', 'ta:2', 'ta:1', 'ta:0'], name='t_a', batch_size=7),        # permuted classes
        t_b=from_torch(torch.nn.Linear(3, 2), 'sb', 'tb', classes=['w', 'u'], name='t_b'),
        lit_a=from_lightning(LitLinear(5, 4, seed=1), 'sa', 'ta', classes=range(4), name='lit_a'),
    )


# ---------------------------------------------------------------- adapters
def test_sklearn_class_mapping(pool):
    est = fit_lr(pool, 'sb', ['u', 'v', 'w'])
    assert from_sklearn(est, 'sb', 'tb').classes_ == ['tb:u', 'tb:v', 'tb:w']
    assert from_sklearn(est, 'sb', 'tb', classes=['tb:w', 'tb:v', 'tb:u']).classes_ == ['tb:w', 'tb:v', 'tb:u']
    assert from_sklearn(est, 'sb', 'tb', classes={'u': 'tb:v', 'v': 'tb:u', 'w': 'tb:w'}).classes_ == ['tb:v', 'tb:u', 'tb:w']
    with pytest.raises(ShapeError): from_sklearn(est, 'sb', 'tb', classes=['tb:u'])
    with pytest.raises(UnknownLabelError): from_sklearn(est, 'sb', 'tb', classes={'u': 'tb:u'})
    with pytest.raises(MemberError, match='not fitted'): from_sklearn(LogisticRegression(), 'sb', 'tb')
    from sklearn.svm import SVC
    with pytest.raises(MemberError, match='predict_proba'): from_sklearn(SVC().fit(pool.X('sb'), np.arange(60) % 2), 'sb', 'tb')
    m = from_sklearn(est, 'sb', 'tb')
    assert m.name == 'LogisticRegression@sb/tb' and isinstance(m, SklearnMember)
    p = m.predict_proba(pool.X('sb'))
    assert p.dtype == np.float32 and p.shape == (60, 3)


def test_torch_adapter_modes_and_outputs(pool):
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Dropout(0.5))
    net.train()
    m = from_torch(net, 'sa', 'ta', classes=range(4), batch_size=16)
    X = pool.X('sa')
    p1, p2 = m.predict_proba(X), m.predict_proba(X)
    np.testing.assert_array_equal(p1, p2)                         # eval mode: dropout off
    assert net.training                                           # mode restored
    np.testing.assert_allclose(p1.sum(1), 1, atol=1e-5)
    with torch.no_grad(): logits = net.eval()(torch.as_tensor(X))
    np.testing.assert_allclose(p1, torch.softmax(logits, -1).numpy(), atol=1e-6)
    sm = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Softmax(-1))
    lsm = torch.nn.Sequential(sm[0], torch.nn.LogSoftmax(-1))
    np.testing.assert_allclose(from_torch(sm, 'sa', 'ta', range(4), output='probs').predict_proba(X),
                               from_torch(lsm, 'sa', 'ta', range(4), output='log_probs').predict_proba(X), atol=1e-5)
    assert from_torch(net, 'sa', 'ta', range(4)).predict_proba(X[:0]).shape == (0, 4)
    with pytest.raises(ParameterError): from_torch(net, 'sa', 'ta', range(4), output='scores')
    with pytest.raises(ParameterError): from_torch(net, 'sa', 'ta', range(4), batch_size=0)
    with pytest.raises(MemberError): from_torch(object(), 'sa', 'ta', range(4))
    with pytest.raises(MemberError, match='from_torch'): from_lightning(net, 'sa', 'ta', range(4))
    assert isinstance(from_lightning(LitLinear(5, 4), 'sa', 'ta', range(4)), LightningMember)


def test_registry(pool):
    for name in ('sklearn', 'torch', 'lightning'): assert name in specialists
    m = specialists.create('torch', module=torch.nn.Linear(3, 3), space='sb', task='tb', classes=['u', 'v', 'w'])
    assert isinstance(m, TorchMember) and m.classes_ == ['tb:u', 'tb:v', 'tb:w']


# ---------------------------------------------------------------- alignment
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_align_probs_property(data):
    c = data.draw(st.integers(2, 9))
    labels = [f't:{i}' for i in range(c)]
    k = data.draw(st.integers(1, c))
    known = data.draw(st.permutations(labels))[:k]
    n = data.draw(st.integers(0, 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    p = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    a = align_probs(p, known, labels)
    assert a.shape == (n, c) and a.dtype == np.float32
    np.testing.assert_allclose(a.sum(1), p.sum(1), atol=1e-6)
    cols = class_columns(known, labels)
    np.testing.assert_array_equal(a[:, cols], p)
    others = np.setdiff1d(np.arange(c), cols)
    assert (a[:, others] == 0).all()


def test_member_subset_gets_zero_on_unknown_classes(pool, members):
    ens = Ensemble([members['lr_a'], members['lr_b']], pool.labels)
    probs, mask = ens.predict_proba(pool, progress=False)
    a = pool.space == 'sa'
    assert (probs[a, 0, pool.labels.index('ta:3')] == 0).all()
    np.testing.assert_allclose(probs[a, 0].sum(-1), 1, atol=1e-5)
    # permuted torch classes land in the right columns
    ens = Ensemble([members['t_a'], members['lr_b']], pool.labels)
    probs, _ = ens.predict_proba(pool, progress=False, engine='loop')
    raw = members['t_a'].predict_proba(pool.X('sa'))
    np.testing.assert_allclose(probs[a, 0, :4], raw[:, ::-1], atol=1e-6)


def test_label_space_errors(pool, members):
    with pytest.raises(DuplicateIdError): label_index(['a:1', 'a:1'])
    with pytest.raises(UnknownLabelError, match="'ta:0'"): Ensemble([members['lr_a']], ['tb:u'])
    foreign = from_sklearn(members['lr_b'].estimator, 'sa', 'ta', classes=['tb:u', 'tb:v', 'tb:w'], name='foreign')
    with pytest.raises(UnknownLabelError, match='another task'): Ensemble([foreign], pool.labels)
    with pytest.raises(EmptyInputError): Ensemble([], [])


# ---------------------------------------------------------------- masks and planning
def test_mask_and_masked_entries(pool, members):
    ens = Ensemble(list(members.values()), pool.labels)
    probs, mask = ens.predict_proba(pool, progress=False, batch_size=13)
    a = pool.space == 'sa'
    np.testing.assert_array_equal(mask, np.stack([a, ~a, a, ~a, a], 1))
    assert (probs[~mask] == 0).all()
    np.testing.assert_allclose(probs[mask].sum(-1), 1, atol=1e-5)
    # each task's columns hold all the mass of its samples
    assert (probs[a][:, :, 4:] == 0).all() and (probs[~a][:, :, :4] == 0).all()


def test_mask_error_names_space_and_task(pool, members):
    ens = Ensemble([members['lr_a']], pool.labels)
    with pytest.raises(MaskError) as e: ens.predict_proba(pool, progress=False)
    msg = str(e.value)
    assert "60 in space 'sb' with task 'tb'" in msg and "space='sb', task='tb'" in msg and 'coverage' in msg
    # fine on the ids it covers
    ids = pool.ids[pool.space == 'sa']
    probs, mask = ens.predict_proba(pool, ids=ids, progress=False)
    assert probs.shape == (120, 1, 7) and mask.all()


def test_member_matching_no_sample(pool, members):
    stray = from_sklearn(members['lr_b'].estimator, 'text', 'tb', name='stray')
    ens = Ensemble([members['lr_a'], members['lr_b'], stray], pool.labels)
    with pytest.raises(MemberError, match="'stray' \\(space 'text', task 'tb'\\) apply to no sample"):
        ens.predict_proba(pool, progress=False)
    assert ens.coverage(pool).set_index('space').loc['text', 'n_samples'] == 0


def test_ids_subset_matches_full(pool, members):
    ens = Ensemble(list(members.values()), pool.labels)
    full = ens.score(pool, progress=False).set_index('id')
    ids = pool.ids[[170, 3, 99, 42]]
    part = ens.score(pool, ids=ids, progress=False)
    assert part.id.tolist() == ids.tolist()
    np.testing.assert_allclose(part.score.values, full.loc[ids, 'score'].values, atol=1e-6)
    assert part.prediction.tolist() == full.loc[ids, 'prediction'].tolist()
    with pytest.raises(UnknownNameError, match='not in the pool'): ens.score(pool, ids=['nope'], progress=False)
    with pytest.raises(DuplicateIdError): ens.score(pool, ids=[ids[0], ids[0]], progress=False)
    with pytest.raises(EmptyInputError): ens.score(pool, ids=[], progress=False)


# ---------------------------------------------------------------- Lightning path
def test_lightning_path_equals_plain_torch_path(pool, members, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ens = Ensemble(list(members.values()), pool.labels)
    for bs in (1, 17, 4096):
        p_l, m_l = ens.predict_proba(pool, batch_size=bs, progress=False, engine='lightning')
        p_t, m_t = ens.predict_proba(pool, batch_size=bs, progress=False, engine='loop')
        np.testing.assert_array_equal(m_l, m_t)
        np.testing.assert_allclose(p_l, p_t, atol=1e-6)
    ids = pool.ids[::-3]
    np.testing.assert_allclose(ens.predict_proba(pool, ids=ids, progress=False)[0],
                               ens.predict_proba(pool, ids=ids, progress=False, engine='loop')[0], atol=1e-6)
    assert list(tmp_path.iterdir()) == []                        # no lightning_logs, no checkpoints
    assert all(m.module.training for m in ens.members if isinstance(m, TorchMember))


def test_interactive_multiprocess_strategies_are_refused(pool, members):
    ens = Ensemble([members['t_a'], members['lr_b']], pool.labels)
    for s in ('ddp_spawn', 'ddp_notebook', 'ddp_fork'):
        with pytest.raises(ParameterError, match="strategy='ddp' from a script"): ens.predict_proba(pool, strategy=s, progress=False)


@slow
def test_ddp_two_cpu_processes_match_loop(tmp_path):
    "strategy='ddp' on 2 CPU processes (gloo): every rank gets the full array, equal to the plain loop."
    script = tmp_path / 'run.py'
    script.write_text(textwrap.dedent('''
        import os, sys, numpy as np, torch
        sys.path.insert(0, os.path.dirname(__file__))
        from umc_nb.ensemble import Ensemble, from_torch
        class P:
            def __init__(s, n):
                rng = np.random.default_rng(0)
                s.ids = np.array([f'a/{i}' for i in range(n)]); s.domain = s.space = np.array(['s'] * n)
                s.task = np.array(['t'] * n); s.F = rng.standard_normal((n, 8)).astype(np.float32)
            def __len__(s): return len(s.ids)
            def X(s, space, idx=None): return s.F if idx is None else s.F[idx]
        torch.manual_seed(0)
        ens = Ensemble([from_torch(torch.nn.Linear(8, 3), 's', 't', range(3), name=f'n{i}') for i in range(2)], ['t:0', 't:1', 't:2'])
        pool = P(1003)
        p, _ = ens.predict_proba(pool, batch_size=50, progress=False, strategy='ddp', devices=2)
        q, _ = ens.predict_proba(pool, batch_size=50, progress=False, engine='loop')
        rank = os.environ.get('LOCAL_RANK', '0')
        with open(os.path.join(os.path.dirname(__file__), f'rank{rank}.txt'), 'w') as f:
            f.write(f"{float(np.abs(p - q).max())} {int((p.sum(-1) == 0).sum())}")
    '''))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for rank in (0, 1):
        diff, zeros = (tmp_path / f'rank{rank}.txt').read_text().split()
        assert float(diff) < 1e-6 and int(zeros) == 0, (rank, diff, zeros)


# ---------------------------------------------------------------- scores table
def test_score_table_matches_reference(pool, members):
    ens = Ensemble(list(members.values()), pool.labels, weights=[1, 2, 1, 1, 3])
    probs, mask = ens.predict_proba(pool, progress=False)
    df = ens.score(pool, alpha=0.3, progress=False)
    assert list(df.columns) == ['id', 'domain', 'space', 'task', 'entropy', 'entropy_norm', 'disagreement',
                                'disagreement_norm', 'margin', 'least_confidence', 'score', 'prediction']
    ref = reference_scores(probs, mask=mask, weights=np.array([1, 2, 1, 1, 3.]))
    np.testing.assert_allclose(df.entropy, ref['entropy'], atol=1e-4)
    np.testing.assert_allclose(df.disagreement, ref['disagreement'], atol=1e-4)
    n_cls = np.where(pool.task == 'ta', 4, 3)
    np.testing.assert_allclose(df.entropy_norm, ref['entropy'] / np.log(n_cls), atol=1e-4)
    np.testing.assert_allclose(df.score, 0.3 * df.entropy_norm + 0.7 * df.disagreement_norm, atol=1e-6)
    assert (df.prediction.str.split(':').str[0] == df.task).all()
    assert df.entropy_norm.between(0, 1 + 1e-6).all()


def test_score_probs_reuses_predictions(pool, members):
    ens = Ensemble(list(members.values()), pool.labels)
    probs, mask = ens.predict_proba(pool, progress=False)
    a = ens.score_probs(pool, probs, mask, alpha=0.7)
    b = ens.score(pool, alpha=0.7, progress=False)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6)
    with pytest.raises(ParameterError): ens.score(pool, alpha=-0.1, progress=False)


# ---------------------------------------------------------------- add / remove
def test_add_remove_replace(pool, members):
    ens = Ensemble([members['lr_a'], members['lr_b']], pool.labels, weights=[2, 4])
    ens.add(members['t_a'])
    assert ens.names == ['lr_a', 'lr_b', 't_a'] and ens.weights == [2, 4, 3]
    with pytest.raises(DuplicateIdError, match='replace=True'): ens.add(members['t_a'])
    new = from_torch(torch.nn.Linear(5, 4), 'sa', 'ta', range(4), name='t_a')
    ens.add(new, replace=True, weight=5)
    assert ens['t_a'] is new and ens.weights == [2, 4, 5]
    ens.remove('lr_a')
    assert ens.names == ['lr_b', 't_a'] and ens.weights == [4, 5]
    with pytest.raises(UnknownNameError): ens.remove('lr_a')
    bad = from_sklearn(members['lr_a'].estimator, 'sa', 'ta', classes=['zz:0', 'zz:1', 'zz:2'], name='bad')
    with pytest.raises(UnknownLabelError): ens.add(bad)
    assert ens.names == ['lr_b', 't_a'] and ens.weights == [4, 5]      # unchanged after a failed add
    with pytest.raises(DuplicateIdError): Ensemble([members['lr_a'], members['lr_a']], pool.labels)


# ---------------------------------------------------------------- bad member outputs
class Custom:
    "A custom (protocol-only) member."
    def __init__(self, fn, name='custom'): self.fn, self.name, self.space, self.task = fn, name, 'sb', 'tb'
    classes_ = ['tb:u', 'tb:v']
    def predict_proba(self, X): return self.fn(len(X))


@pytest.mark.parametrize('fn, err, msg', [
    (lambda n: np.full((n, 3), 1 / 3), ShapeError, 'returned shape'),
    (lambda n: np.full((n + 1, 2), 0.5), ShapeError, 'returned shape'),
    (lambda n: np.full((n, 2), 0.7), InvalidProbabilitiesError, 'do not sum to one'),
    (lambda n: np.tile([[-1.0, 2.0]], (n, 1)), InvalidProbabilitiesError, 'negative'),
    (lambda n: np.full((n, 2), np.inf), InvalidProbabilitiesError, 'NaN or inf'),
])
def test_bad_member_output(pool, members, fn, err, msg):
    ens = Ensemble([members['lr_a'], Custom(fn)], pool.labels)
    with pytest.raises(err, match=msg) as e: ens.predict_proba(pool, progress=False)
    assert "'custom'" in str(e.value) and isinstance(e.value, UMCError)


def test_custom_member_works(pool, members):
    ens = Ensemble([members['lr_a'], Custom(lambda n: np.tile([[0.25, 0.75]], (n, 1)))], pool.labels)
    probs, mask = ens.predict_proba(pool, progress=False)
    np.testing.assert_allclose(probs[pool.space == 'sb', 1, 4:], [[0.25, 0.75, 0]] * 60)


def test_not_a_member(pool):
    with pytest.raises(MemberError, match='lacks'): Ensemble([object()], pool.labels)


# ---------------------------------------------------------------- the data worker's fixture, when it exists
def test_uncovered_drop(pool, members):
    ens = Ensemble([members['lr_a'], members['t_a']], pool.labels)
    df = ens.score(pool, uncovered='drop', progress=False)
    assert df.id.tolist() == pool.ids[pool.space == 'sa'].tolist()
    ids = pool.ids[[0, 1, 2, 3, 4, 5]]
    assert ens.score(pool, ids=ids, uncovered='drop', progress=False).id.tolist() == [i for i in ids if i in set(df.id)]
    with pytest.raises(ParameterError): ens.score(pool, uncovered='ignore', progress=False)
    with pytest.raises(MaskError): ens.score(pool, ids=pool.ids[pool.space == 'sb'][:3], uncovered='drop', progress=False)


def test_on_benchmark_fixture():
    "The data worker's fixture and specialists through the ensemble (skipped until they exist)."
    data = pytest.importorskip('umc_nb.data')
    from umc_nb.core import DataSourceError
    try: b = data.load_benchmark(fixture=True, specialists=True)
    except DataSourceError as e: pytest.skip(f'fixture not available: {e}')
    ens = Ensemble(b.specialists, b.pool.labels)
    df = ens.score(b.pool, uncovered='drop', progress=False)
    covered = ens.covered(b.pool)
    assert len(df) == covered.sum() > 0 and df.score.between(0, 1 + 1e-6).all()
    assert (df.prediction.str.split(':').str[0] == df.task).all()
