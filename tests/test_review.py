"""Unit tests of the review state (no browser): label, skip, undo, bulk and agreement templates, resume after a restart,
keys, escaping, and the store holding exactly what was done. A tiny hand-made pool and ensemble keep them fast."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from umc_nb.core import UnknownLabelError, UnknownNameError, ParameterError
from umc_nb.data import Pool
from umc_nb.store import LabelStore
from umc_nb.review import Review, ReviewStateError, Dashboard, payload_html, card_html, esc

LABELS = ['digit:0', 'digit:1', 'digit:2', 'topic:a', 'topic:b']


class FakeEnsemble:
    "Two members per space; on even digit samples they agree, on odd ones they split."
    labels = LABELS
    names = ['img/a', 'img/b', 'txt/a', 'txt/b']

    class M:
        def __init__(self, name, space, task): self.name, self.space, self.task = name, space, task
    members = [M('img/a', 'img', 'digit'), M('img/b', 'img', 'digit'), M('txt/a', 'txt', 'topic'), M('txt/b', 'txt', 'topic')]

    def predict_proba(self, pool, ids=None, progress=False, engine='loop'):
        idx = [int(np.flatnonzero(pool.ids == i)[0]) for i in ids]
        p = np.zeros((len(idx), 4, len(LABELS)), np.float32); m = np.zeros((len(idx), 4), bool)
        for k, i in enumerate(idx):
            if pool.space[i] == 'img':
                c = i % 3; p[k, 0, c] = .8; p[k, 0, (c + 1) % 3] = .2
                d = c if i % 2 == 0 else (c + 1) % 3; p[k, 1, d] = .7; p[k, 1, (d + 2) % 3] = .3
                m[k, :2] = True
            else:
                p[k, 2, 3] = .6; p[k, 2, 4] = .4; p[k, 3, 3 + (i % 2)] = .9; p[k, 3, 4 - (i % 2)] = .1
                m[k, 2:] = True
        return p, m


def make_pool(n_img=8, n_txt=6):
    n = n_img + n_txt
    texts = np.array([f'gloss {k}' for k in range(n_txt)], dtype=object)
    texts[0] = '<script>alert(1)</script>'
    return Pool(ids=[f'img/{k}' for k in range(n_img)] + [f'txt/{k}' for k in range(n_txt)],
                domain=['hand'] * n_img + ['wn'] * n_txt, space=['img'] * n_img + ['txt'] * n_txt,
                task=['digit'] * n_img + ['topic'] * n_txt,
                features={'img': np.zeros((n_img, 4), np.float32), 'txt': np.zeros((n_txt, 2), np.float32)},
                tasks={'digit': ['0', '1', '2'], 'topic': ['a', 'b']}, modality={'img': 'image', 'txt': 'text'},
                payload={'img': np.random.default_rng(0).random((n_img, 8, 8)).astype(np.float32), 'txt': texts})


@pytest.fixture
def setup(tmp_path):
    pool = make_pool()
    store = LabelStore(tmp_path / 's.sqlite', pool_ids=pool.ids, labels=LABELS, annotator='ana')
    clusters = [dict(arm='r1/img/0', members=list(range(8))), dict(arm='r1/txt/0', members=list(range(8, 14)))]
    scores = np.linspace(0.1, 0.9, len(pool))
    import pandas as pd
    table = pd.DataFrame({'score': scores, 'entropy_norm': scores, 'disagreement_norm': scores / 2,
                          'prediction': ['digit:0'] * 8 + ['topic:a'] * 6})
    kw = dict(clusters=clusters, allocation={'r1/img/0': 4, 'r1/txt/0': 3}, table=table, ensemble=FakeEnsemble(),
              round=1, model_version='m1', annotator='ana')
    yield pool, store, kw
    store.close()


def current(store):
    c = store.current_labels()
    return dict(zip(c['item_id'], c['label']))


def test_cards_sorted_and_complete(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    cards = rv.cards('r1/img/0')
    assert [c['idx'] for c in cards] == list(range(7, -1, -1))          # highest score first
    assert [c['asked'] for c in cards] == [True] * 4 + [False] * 4
    c = cards[0]
    assert c['payload'].startswith('data:image/png;base64,') and c['modality'] == 'image'
    assert len(c['top']) == 3 and len(c['members']) == 2
    assert rv.current == 7 and rv.arm == 'r1/img/0'
    t = rv.clusters()
    assert t[['allocation', 'labelled']].values.tolist() == [[4, 0], [3, 0]]


def test_label_skip_undo_write_one_event_each(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    e1 = rv.label('2')                              # bare class name -> digit:2
    assert current(store) == {'img/7': 'digit:2'} and rv.current == 6
    ev = store.events('label').iloc[-1]
    assert (ev['round'], ev['arm'], ev['model_version'], ev['annotator']) == (1, 'r1/img/0', 'm1', 'ana')
    assert ev['score'] == pytest.approx(kw['table']['score'][7])
    rv.skip()
    assert rv.status(6) == 'skipped' and rv.current == 5
    rv.undo()
    assert current(store) == {} and rv.current == 7 and rv.status(7) == 'pending'
    assert store.events()['kind'].tolist()[-3:] == ['label', 'skip', 'undo']
    with pytest.raises(ReviewStateError): rv.undo()
    with pytest.raises(UnknownLabelError): rv.label('topic:a')          # another task's label: nothing written
    with pytest.raises(UnknownLabelError): rv.label(7)
    assert len(store.events('label')) == 1 and e1 > 0


def test_relabel_then_undo_restores_previous(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    rv.label('1', 3); rv.label('2', 3)
    assert current(store) == {'img/3': 'digit:2'}
    rv.undo()
    assert current(store) == {'img/3': 'digit:1'} and rv.labels_[3] == 'digit:1'


def test_auto_advance_across_clusters(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    for _ in range(4): rv.label('0')
    assert rv.arm == 'r1/txt/0' and rv.current == 13                    # allocation of the image cluster met
    for _ in range(3): rv.label('a')
    p = rv.progress()
    assert p['complete'] and p['toward_allocation'] == 7 and p['labelled'] == 7


def test_bulk_selected_and_cluster_one_transaction(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    rv.select(1); rv.select(2); rv.select(2, on=False); rv.select('img/4')
    ids = rv.bulk_label('digit:1')
    assert len(ids) == 2 and current(store) == {'img/1': 'digit:1', 'img/4': 'digit:1'} and not rv.selected_
    batch = {d['batch'] for d in store.events('label')['data']}
    assert len(batch) == 1
    ids = rv.bulk_label('topic:b', arm='r1/txt/0')
    assert len(ids) == 6 and sum(v == 'topic:b' for v in current(store).values()) == 6
    assert len(rv.undo()) == 6                                          # the whole bulk action comes back
    assert set(current(store)) == {'img/1', 'img/4'}
    with pytest.raises(UnknownLabelError): rv.bulk_label('digit:1', arm='r1/txt/0')
    assert set(current(store)) == {'img/1', 'img/4'}                   # nothing of the refused action was written


def test_accept_agreement(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    a = rv.agreement(arm='r1/img/0')
    assert a.set_index('idx')['agree'].notna().to_dict() == {i: i % 2 == 0 for i in range(7, -1, -1)}
    ids = rv.accept_agreement(arm='r1/img/0')
    assert len(ids) == 4
    assert current(store) == {f'img/{i}': f'digit:{i % 3}' for i in (0, 2, 4, 6)}
    assert {d['template'] for d in store.events('label')['data']} == {'agree'}
    assert rv.accept_agreement(arm='r1/img/0') == []                   # nothing left that all members agree on


def test_resume_after_restart(setup, tmp_path):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    rv.label('0'); rv.label('1'); rv.skip(); rv.flag('blurry', 2)
    path = store.url
    store.close()
    store2 = LabelStore(tmp_path / 's.sqlite', pool_ids=pool.ids, labels=LABELS, annotator='ana')   # a new kernel
    rv2 = Review(pool, store2, **kw).refresh()
    assert rv2.labels_ == {7: 'digit:0', 6: 'digit:1'} and rv2.skipped_ == {5} and rv2.flagged_ == {2}
    assert rv2.current == 4                                              # first card with neither label nor skip
    rv2.undo()
    assert rv2.current == 6 and current(store2) == {'img/7': 'digit:0'}
    store2.close()


def test_keys(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    assert rv.shortcuts(0) == {'0': 'digit:0', '1': 'digit:1', '2': 'digit:2'}
    assert rv.shortcuts(8) == {'1': 'topic:a', '2': 'topic:b'}
    assert rv.press('1') == 'label digit:1' and current(store) == {'img/7': 'digit:1'}
    assert rv.press('u') == 'undo' and rv.current == 7
    assert rv.press('n') == 'next' and rv.current == 6
    assert rv.press('p') == 'previous' and rv.current == 7
    assert rv.press('s') == 'skip' and rv.status(7) == 'skipped'
    assert rv.press('q') is None


def test_standalone_and_errors(tmp_path):
    pool = make_pool()
    rv = Review(pool, LabelStore(':memory:'))
    assert rv.clusters()['arm'].tolist() == ['hand', 'wn'] and rv.round is None
    rv.label('0'); rv.choose('wn'); rv.label('b')
    assert rv.store.current_labels()['round'].isna().all()
    with pytest.raises(ReviewStateError, match='no Curator'): rv.finish_round()
    with pytest.raises(UnknownNameError): rv.choose('nope')
    with pytest.raises(UnknownNameError): rv.goto('img/99')
    with pytest.raises(ParameterError): Review(pool, LabelStore(':memory:'), clusters=[dict(arm='x', members=[99])]).clusters()
    with pytest.raises(ParameterError): Review(pool, LabelStore(':memory:'), clusters=[dict(arm='x', members=[1]), dict(arm='x', members=[2])]).clusters()


def test_payloads_escaped(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    h = payload_html(pool, 8)
    assert '<script>' not in h and '&lt;script&gt;alert(1)&lt;/script&gt;' in h
    c = rv.card(8)
    assert '<script>' not in card_html(rv, c) and '<script>' not in card_html(rv, c, big=False)
    assert esc('"><img onerror=x>') == '&quot;&gt;&lt;img onerror=x&gt;'


def test_dashboard_forwards_clicks(setup):
    pool, store, kw = setup
    rv = Review(pool, store, **kw)
    db = Dashboard(rv)
    assert [b.tooltip for b in db.class_box.children] == ['digit:0', 'digit:1', 'digit:2']
    db.class_box.children[1].click()
    assert current(store) == {'img/7': 'digit:1'}
    db._on_key({'key': 'u', 'timeStamp': 1.0}); db._on_key({'key': 'u', 'timeStamp': 1.0})   # a duplicate report: one undo
    assert current(store) == {} and len(store.events('undo')) == 1
    db.cluster_select.value = 'r1/txt/0'
    assert rv.arm == 'r1/txt/0' and [b.tooltip for b in db.class_box.children] == ['topic:a', 'topic:b']
    db.act(rv.label, 'digit:0')
    assert 'is not a class' in db.message.value and current(store) == {}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(['label0', 'label1', 'skip', 'undo', 'next', 'prev', 'bulk']), max_size=25))
def test_store_matches_a_reference_model(actions):
    "Any sequence of actions: the store's current labels equal a plain-dict model of what was labelled and undone."
    pool = make_pool()
    store = LabelStore(':memory:', pool_ids=pool.ids, annotator='ana')
    rv = Review(pool, store, clusters=[dict(arm='a', members=list(range(8)))], annotator='ana')
    model, history = {}, []            # history: stack of actions, each a list of (idx, previous label or None)
    for a in actions:
        i = rv.current
        if a in ('label0', 'label1'):
            history.append([(i, model.get(i))]); model[i] = f'digit:{a[-1]}'; rv.label(a[-1])
        elif a == 'skip': rv.skip()
        elif a == 'next': rv.next_card()
        elif a == 'prev': rv.previous_card()
        elif a == 'bulk':
            ks = [k for k in rv.members_['a'] if k not in model]
            rv.bulk_label('2', arm='a')
            if ks: history.append([(k, None) for k in ks]); model.update({k: 'digit:2' for k in ks})
        elif a == 'undo':
            if not history:
                with pytest.raises(ReviewStateError): rv.undo()
                continue
            rv.undo()
            for k, prev in history.pop():
                if prev is None: model.pop(k, None)
                else: model[k] = prev
            # an undo of a relabel brings the older label back: the older entry is then the top of its own history
        assert current(store) == {str(pool.ids[k]): v for k, v in model.items()}
        assert rv.labels_ == model
