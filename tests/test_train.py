"Retraining (umc_nb.train): save/load, determinism, the loss, learning on a tiny problem, bad input."
import json, os, random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from umc_nb.core import (EmptyInputError, ShapeError, UnknownLabelError, UnknownNameError, ParameterError,
                         DuplicateIdError, InvalidProbabilitiesError)
from umc_nb.train import (train_model, Trained, SingleClassError, CheckpointError, distillation_loss, soften,
                          DistillModule, MultiDomainNet, CurationDataModule, check_labelled, evaluate, ensemble_mean, NEG)


@dataclass
class TinyPool:
    "Two feature spaces ('a' 5-d, 'b' 3-d), two tasks ('t3' three classes on 'a', 't2' two classes on 'b')."
    ids: np.ndarray; domain: np.ndarray; space: np.ndarray; task: np.ndarray; features: dict; tasks: dict; modality: dict
    def __len__(self): return len(self.ids)
    def rows(self, space): return np.flatnonzero(self.space == space)
    def X(self, space, idx=None):
        if idx is None: return self.features[space]
        return self.features[space][np.searchsorted(self.rows(space), np.asarray(idx))]
    @property
    def labels(self): return [f'{t}:{c}' for t, cs in self.tasks.items() for c in cs]


def tiny_pool(n=240, seed=0):
    "Separable blobs; returns (pool, global labels)."
    rng = np.random.default_rng(seed)
    space = np.where(rng.random(n) < 0.6, 'a', 'b')
    y = np.empty(n, np.int64); feats = {}
    for s, dim, k, off in (('a', 5, 3, 0), ('b', 3, 2, 3)):
        rows = np.flatnonzero(space == s)
        c = rng.integers(0, k, len(rows))
        centres = rng.normal(0, 3, (k, dim))
        feats[s] = (centres[c] + rng.normal(0, 1, (len(rows), dim))).astype(np.float32) * (100 if s == 'b' else 1)
        y[rows] = off + c
    pool = TinyPool(ids=np.array([f'x/{i}' for i in range(n)]), domain=space.copy(), space=space,
                    task=np.where(space == 'a', 't3', 't2'), features=feats,
                    tasks={'t3': ['p', 'q', 'r'], 't2': ['yes', 'no']}, modality={'a': 'table', 'b': 'table'})
    return pool, y


def teacher(pool, y, seed=0):
    "Noisy soft targets (n, C) that know the truth 70% of the time and give 0 to one wrong class of each t3 item."
    rng = np.random.default_rng(seed)
    C = len(pool.labels); s = np.zeros((len(pool), C), np.float32)
    for i in range(len(pool)):
        cols = [0, 1, 2] if pool.task[i] == 't3' else [3, 4]
        p = rng.dirichlet(np.ones(len(cols))) * 0.3
        p[cols.index(y[i])] += 0.7
        if len(cols) == 3:
            zero = [c for c in range(3) if cols[c] != y[i]][0]
            p[zero] = 0; p /= p.sum()
        s[i, cols] = p
    return s


@pytest.fixture(scope='module')
def data():
    pool, y = tiny_pool()
    idx = np.arange(0, len(pool), 2)
    return pool, y, idx, teacher(pool, y)


KW = dict(max_epochs=8, batch_size=16, hidden=16, shared=16)


def test_save_load_round_trip(data, tmp_path):
    pool, y, idx, soft = data
    tr = train_model(pool, idx, y[idx], soft[idx], lam=0.5, seed=3, version=2, **KW)
    tr.save(tmp_path / 'm')
    assert sorted(os.listdir(tmp_path / 'm')) == ['config.json', 'model.safetensors']
    back = Trained.load(tmp_path / 'm')
    np.testing.assert_array_equal(back.predict_proba(pool), tr.predict_proba(pool))
    assert back.config == tr.config and back.history == tr.history
    assert [m.name for m in back.as_members()] == ['F/a/t3', 'F/b/t2'] and back.version == 2
    X = pool.X('a', pool.rows('a')[:7])
    np.testing.assert_array_equal(back.as_members()[0].predict_proba(X), tr.as_members()[0].predict_proba(X))


def test_ckpt_path_writes_a_loadable_model(data, tmp_path):
    pool, y, idx, soft = data
    tr = train_model(pool, idx, y[idx], lam=1.0, seed=0, ckpt_path=tmp_path / 'ck', **KW)
    np.testing.assert_array_equal(Trained.load(tmp_path / 'ck').predict_proba(pool, idx[:10]), tr.predict_proba(pool, idx[:10]))


def test_load_refuses_bad_checkpoints(data, tmp_path):
    pool, y, idx, soft = data
    with pytest.raises(CheckpointError, match='missing'): Trained.load(tmp_path / 'nothing')
    tr = train_model(pool, idx, y[idx], lam=1.0, seed=0, **KW)
    d = tr.save(tmp_path / 'm')
    cfg = json.loads((d / 'config.json').read_text())
    (d / 'config.json').write_text(json.dumps({**cfg, 'format': 'umc_nb.train/99'}))
    with pytest.raises(CheckpointError, match='format'): Trained.load(d)
    (d / 'config.json').write_text(json.dumps({**cfg, 'arch': {**cfg['arch'], 'hidden': 7}}))
    with pytest.raises(CheckpointError, match='do not fit'): Trained.load(d)


def test_same_seed_same_model_other_seed_other_model(data):
    pool, y, idx, soft = data
    a = train_model(pool, idx, y[idx], soft[idx], lam=0.5, seed=7, **KW).predict_proba(pool)
    b = train_model(pool, idx, y[idx], soft[idx], lam=0.5, seed=7, **KW).predict_proba(pool)
    c = train_model(pool, idx, y[idx], soft[idx], lam=0.5, seed=8, **KW).predict_proba(pool)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_caller_state_is_left_alone(data):
    pool, y, idx, soft = data
    np.random.seed(123); random.seed(5); torch.manual_seed(9)
    before = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone())
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train_model(pool, idx, y[idx], lam=1.0, seed=0, **KW)
    np.testing.assert_array_equal(np.random.get_state()[1], before[0])
    assert random.getstate() == before[1] and torch.equal(torch.get_rng_state(), before[2])
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det


def test_lambda_one_is_plain_cross_entropy(data):
    pool, y, idx, soft = data
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 5, generator=g); yb = torch.randint(0, 5, (9,), generator=g)
    p = torch.softmax(torch.randn(9, 5, generator=g), -1)
    for T in (0.5, 1.0, 4.0):
        loss, ce, kl = distillation_loss(logits, yb, p, lam=1.0, temperature=T)
        assert torch.equal(loss, F.cross_entropy(logits, yb)) and kl.item() == 0
    # and inside the Lightning module, on a real batch
    dm = CurationDataModule(pool, idx, y[idx], soft[idx], batch_size=16, seed=0); dm.setup()
    net = MultiDomainNet({s: pool.features[s].shape[1] for s in pool.features}, {'t3': [0, 1, 2], 't2': [3, 4]}, 5, 8, 8, 0.0)
    mod = DistillModule(net, lam=1.0, temperature=3.0)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        got = mod.training_step(batch, 0)
        want = F.cross_entropy(net(batch['x'], batch['space'], batch['task']), batch['y'])
    assert torch.equal(got, want)


def test_kl_is_teacher_to_student_and_finite_with_teacher_zeros():
    logits = torch.tensor([[2.0, 0.5, -1.0, NEG]], requires_grad=True)
    p = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    loss, ce, kl = distillation_loss(logits, torch.tensor([0]), p, lam=0.0, temperature=1.0)
    q = torch.softmax(logits.detach(), -1)[0]
    want = 0.7 * np.log(0.7 / q[0].item()) + 0.3 * np.log(0.3 / q[1].item())
    assert abs(kl.item() - want) < 1e-5
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # temperature: T^2 scaling of the soft term
    l2, _, kl2 = distillation_loss(logits.detach(), torch.tensor([0]), p, lam=0.0, temperature=2.0)
    assert abs(l2.item() - 4 * kl2.item()) < 1e-5


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0, 1), st.floats(0.25, 8))
def test_loss_is_at_least_weighted_ce(seed, lam, T):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, generator=g) * 3
    y = torch.randint(0, 6, (4,), generator=g)
    p = torch.softmax(torch.randn(4, 6, generator=g) * 3, -1) * (torch.rand(4, 6, generator=g) > 0.3)
    p[:, 0] += 1e-3; p = p / p.sum(-1, keepdim=True)
    loss, ce, kl = distillation_loss(logits, y, p, lam=lam, temperature=T)
    assert torch.isfinite(loss) and kl >= -1e-6
    assert loss >= lam * ce - 1e-5
    s = soften(p, T)
    assert torch.allclose(s.sum(-1), torch.ones(4), atol=1e-5) and torch.equal(s == 0, p == 0)


@pytest.mark.parametrize('lam', [1.0, 0.5])
def test_loss_decreases_and_learns(data, lam):
    pool, y, idx, soft = data
    tr = train_model(pool, idx, y[idx], soft[idx], lam=lam, seed=0, max_epochs=25, batch_size=16, hidden=16, shared=16)
    h = [r for r in tr.history if 'loss' in r]
    assert len(h) == 25 and h[-1]['loss'] < 0.5 * h[0]['loss']
    rest = np.setdiff1d(np.arange(len(pool)), idx)
    assert evaluate(tr.predict_proba(pool, rest), y[rest])['accuracy'] > 0.85


def test_validation_metrics_in_history(data):
    pool, y, idx, soft = data
    tr = train_model(pool, idx, y[idx], lam=1.0, seed=0, val_fraction=0.25, **KW)
    val = [r for r in tr.history if 'val_acc' in r]
    assert len(val) == KW['max_epochs'] and all(0 <= r['val_ece'] <= 1 for r in val)
    assert tr.config['hparams']['n_val'] == 30 and tr.config['hparams']['n_train'] == 90


def test_predictions_stay_inside_the_task(data):
    pool, y, idx, soft = data
    P = train_model(pool, idx, y[idx], lam=1.0, seed=0, **KW).predict_proba(pool)
    a = pool.space == 'a'
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-5)
    assert (P[a][:, 3:] == 0).all() and (P[~a][:, :3] == 0).all()


def test_members_join_an_ensemble(data):
    ens_mod = pytest.importorskip('umc_nb.ensemble')
    pool, y, idx, soft = data
    tr = train_model(pool, idx, y[idx], lam=1.0, seed=0, **KW)
    ens = ens_mod.Ensemble(tr.as_members(), pool.labels)
    probs, mask = ens.predict_proba(pool, progress=False)
    np.testing.assert_allclose(ensemble_mean(probs, mask), tr.predict_proba(pool), atol=1e-6)


def test_bad_input(data):
    pool, y, idx, soft = data
    a = np.flatnonzero(pool.space == 'a')[:10]
    with pytest.raises(SingleClassError, match='one class'): train_model(pool, a, np.zeros(10, int), lam=1.0)
    with pytest.raises(UnknownLabelError, match='outside the global label space'): train_model(pool, a, np.full(10, 5), lam=1.0)
    with pytest.raises(UnknownLabelError, match='not in the global label space'): train_model(pool, a[:2], ['t3:p', 't3:zz'], lam=1.0)
    with pytest.raises(UnknownLabelError, match='another task'): train_model(pool, a[:2], ['t3:p', 't2:yes'], lam=1.0)
    with pytest.raises(ShapeError, match=r'\(30, 5\)'): train_model(pool, idx[:30], y[idx[:30]], soft[:30, :4])
    with pytest.raises(ShapeError): train_model(pool, idx[:30], y[idx[:30]], soft[:29])
    with pytest.raises(EmptyInputError): train_model(pool, [], [], lam=1.0)
    with pytest.raises(DuplicateIdError): train_model(pool, [a[0], a[0], a[1]], y[[a[0], a[0], a[1]]], lam=1.0)
    with pytest.raises(UnknownNameError): train_model(pool, [len(pool)], [0], lam=1.0)
    with pytest.raises(ShapeError, match='labels for'): train_model(pool, idx[:5], y[idx[:4]], lam=1.0)
    with pytest.raises(ParameterError, match='soft_targets is None'): train_model(pool, idx, y[idx], lam=0.5)
    with pytest.raises(ParameterError, match='lam'): train_model(pool, idx, y[idx], soft[idx], lam=1.5)
    with pytest.raises(ParameterError, match='temperature'): train_model(pool, idx, y[idx], soft[idx], temperature=0)
    bad = soft[idx].copy(); bad[0, 0] = np.nan
    with pytest.raises(InvalidProbabilitiesError): train_model(pool, idx, y[idx], bad)
    off = np.zeros((len(idx), 5), np.float32); off[:, 3] = 1          # all mass on t2 for every item
    with pytest.raises(InvalidProbabilitiesError, match='no mass on its task'): train_model(pool, idx, y[idx], off)


def test_members_only_where_f_saw_labels(data):
    pool, y, idx, soft = data
    a = np.flatnonzero(pool.space == 'a')[:40]
    tr = train_model(pool, a, y[a], lam=1.0, seed=0, **KW)
    assert [(m.space, m.task) for m in tr.as_members()] == [('a', 't3')]
    assert [m.name for m in tr.as_members(pairs=[('b', 't2')])] == ['F/b/t2']
    assert tr.as_members()[0].classes_ == ['t3:p', 't3:q', 't3:r']
    with pytest.raises(ShapeError, match=r'\(n, 5\)'): tr.as_members()[0].predict_proba(np.zeros((2, 3), np.float32))
