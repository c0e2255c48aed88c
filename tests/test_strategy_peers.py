"""The adapters run inside their peer library's own loop: scikit-activeml (`qs.query(X, y, clf, batch_size)`) and modAL
(`ActiveLearner(query_strategy=...)`). Skipped when the peer is not installed (`pip install 'umc_nb[peers]'`)."""
import json
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from umc_nb.core import UMCError
from umc_nb.strategy import ModALStrategy, UMCStrategy, skactiveml_strategy

ROUTER = {'embedder': 'pca'}


@pytest.fixture(scope='module')
def digits():
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(X), 400, replace=False)
    X, y = X[sel] / 16, y[sel]
    start = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])
    return X, y, start


def test_skactiveml_loop(digits):
    pytest.importorskip('skactiveml')
    from skactiveml.base import SingleAnnotatorPoolQueryStrategy
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.utils import MISSING_LABEL, is_labeled
    X, y, start = digits
    clf = SklearnClassifier(LogisticRegression(max_iter=300), classes=np.arange(10), random_state=0)
    qs = skactiveml_strategy(router=ROUTER, random_state=0)
    assert isinstance(qs, SingleAnnotatorPoolQueryStrategy)
    y_al = np.full(len(X), MISSING_LABEL); y_al[start] = y[start]
    seen = set(start.tolist())
    for cycle in range(3):
        q, util = qs.query(X=X, y=y_al, clf=clf, batch_size=8, return_utilities=True)
        assert len(set(q.tolist())) == 8 and not (set(q.tolist()) & seen)
        assert util.shape == (8, len(X)) and np.isnan(util[0, start]).all() and np.isnan(util[-1, q[0]])
        y_al[q] = y[q]; seen |= set(q.tolist())
    clf.fit(X, y_al)
    assert is_labeled(y_al).sum() == 20 + 24
    rh = qs.strategy_.reward_history()
    assert set(rh['round']) == {1, 2} and (rh['reward'].between(0, 1)).all()     # rounds 1, 2 rewarded on the next query
    # same seed, same loop -> same picks; the state survives JSON
    qs2 = type(qs).from_json(qs.to_json())
    y_b = y_al.copy()
    assert qs.query(X=X, y=y_b, clf=clf, batch_size=5).tolist() == qs2.query(X=X, y=y_b, clf=clf, batch_size=5).tolist()
    with pytest.raises(UMCError, match='candidates=None'):
        qs.query(X=X, y=y_al, clf=clf, candidates=np.arange(5), batch_size=2)


def _modal_shim():
    "modAL 0.4.2.1 calls check_X_y(force_all_finite=...), removed in scikit-learn 1.8 (modAL issue 196): rename it."
    import inspect
    import modAL.models.learners as L
    from sklearn.utils import check_X_y
    if 'force_all_finite' in inspect.signature(check_X_y).parameters: return
    L.check_X_y = lambda *a, force_all_finite=True, **kw: check_X_y(*a, ensure_all_finite=force_all_finite, **kw)


def test_modal_loop(digits):
    pytest.importorskip('modAL')
    from modAL.models import ActiveLearner
    _modal_shim()
    X, y, start = digits
    f = ModALStrategy(router=ROUTER, random_state=0)
    learner = ActiveLearner(LogisticRegression(max_iter=300), query_strategy=f, X_training=X[start], y_training=y[start])
    rest = np.setdiff1d(np.arange(len(X)), start); X_rest, y_rest = X[rest], y[rest]
    for cycle in range(3):
        i, Xq = learner.query(X_rest, n_instances=6)
        assert len(set(np.asarray(i).tolist())) == 6 and np.array_equal(Xq, X_rest[i])
        learner.teach(Xq, y_rest[i])
        X_rest, y_rest = np.delete(X_rest, i, 0), np.delete(y_rest, i)
    assert len(learner.y_training) == 20 + 18
    rh = f.strategy_.reward_history()
    assert set(rh['round']) == {1, 2} and rh['count'].sum() == 12
    g = ModALStrategy.from_json(f.to_json())
    a, b = json.loads(g.to_json()), json.loads(f.to_json())
    assert a['state'] == b['state'] and a['params'] == b['params']      # the estimator comes from the learner at each call


def test_modal_query_without_teach(digits):
    "The query path needs no shim: modAL's own `query` calls the strategy and slices the pool."
    pytest.importorskip('modAL')
    from modAL.models import ActiveLearner
    X, y, start = digits
    learner = ActiveLearner(LogisticRegression(max_iter=300), query_strategy=ModALStrategy(router=ROUTER, random_state=1),
                            X_training=X[start], y_training=y[start])
    rest = np.setdiff1d(np.arange(len(X)), start)
    i, Xq = learner.query(X[rest], n_instances=4)
    assert len(set(np.asarray(i).tolist())) == 4 and np.array_equal(Xq, X[rest][i])
