"The label store's API on SQLite: events, views, refusals, reopening, export; hypothesis properties for bad input."
import json, math, sqlite3
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from umc_nb.core import UMCError, StoreError, UnknownLabelError, DuplicateIdError, ParameterError
from umc_nb.store import (LabelStore, EVENT_KINDS, InvalidEventError, NothingToUndoError, UnknownItemError,
                          SchemaVersionError, PoolMismatchError, pool_fingerprint, encode_id)

@pytest.fixture
def path(tmp_path): return str(tmp_path / 'store' / 'labels.db')   # parent dir is created by the store

def test_file_store_pragmas_and_persistence(path):
    with LabelStore(path, annotator='ana') as s:
        info = s.info()
        assert info['journal_mode'] == 'wal' and info['synchronous'] == 'FULL' and info['schema_version'] == 1
        s.add_label('a', 1, round=0, arm=2, score=0.25, model_version='m1', data={'note': 'x', 'v': np.float32(0.5)})
    with LabelStore(path, synchronous='normal') as s:
        assert s.info()['synchronous'] == 'NORMAL'
        row = s.current_labels().iloc[0]
        assert (row.item_id, row.label, row.annotator, row['round'], row.arm, row.score, row.model_version) == \
               ('a', 1, 'ana', 0, 2, 0.25, 'm1')
        assert s.events().data.iloc[0] == {'note': 'x', 'v': 0.5}
        assert row.ts.tzinfo is not None and abs(pd.Timestamp.now(tz='UTC') - row.ts) < pd.Timedelta('1h')
    with pytest.raises(ParameterError): LabelStore(path, synchronous='OFF')

def test_ids_and_labels_keep_their_type():
    s = LabelStore(':memory:', annotator='a')
    s.add_labels([dict(item_id=7, label=0), dict(item_id='7', label='0'), dict(item_id=np.int64(8), label=np.int32(1))])
    cur = s.current_labels()
    assert cur.item_id.tolist() == [7, '7', 8] and cur.label.tolist() == [0, '0', 1]
    assert s.labeled_ids() == {7, '7', 8}

def test_undo_stack_and_event_ids():
    s = LabelStore(':memory:', annotator='a')
    e1 = s.add_label(1, 'x'); e2 = s.add_label(1, 'y'); s.add_label(1, 'z')
    s.undo(1)
    assert s.current_labels().label.tolist() == ['y']
    s.undo(1, event_id=e1)                     # take back a specific older label
    s.undo(1)
    assert s.current_labels().empty
    with pytest.raises(NothingToUndoError): s.undo(1)
    with pytest.raises(NothingToUndoError, match='already undone'): s.undo(1, event_id=e2)
    with pytest.raises(NothingToUndoError, match='not a label'): s.undo(2, event_id=e2)
    assert list(s.events().kind) == ['label'] * 3 + ['undo'] * 3   # nothing deleted

def test_conflict_policy():
    s = LabelStore(':memory:', annotator='ana')
    s.add_label(1, 'cat')
    s.add_label(1, 'dog')                             # ana corrects herself: not a conflict
    s.add_label(1, 'dog', annotator='ben')            # agrees: not a conflict
    assert not s.current_labels().conflict.any()
    e = s.add_label(1, 'cat', annotator='cy')         # contradicts ben's current 'dog'
    cur = s.current_labels().iloc[0]
    assert cur.label == 'cat' and cur.conflict and cur.event_id == e    # last writer wins, marked
    c = s.conflicts().iloc[0]
    assert (c.label, c.annotator, c.other_label, c.other_annotator, c.current) == ('cat', 'cy', 'dog', 'ben', True)
    s.add_label(1, 'cat', annotator='ana')            # agrees with the current label: conflict resolved
    assert not s.current_labels().conflict.any()
    assert s.conflicts().current.tolist() == [False]
    # within one bulk call the earlier records count as current
    ids = s.add_labels([dict(item_id=2, label='a', annotator='x'), dict(item_id=2, label='b', annotator='y')])
    ev = s.events(item_id=2)
    assert ev.conflict.tolist() == [False, True] and int(ev.conflict_with.iloc[1]) == ids[0]

def test_rounds_and_allocations(path):
    s = LabelStore(path, annotator='a')
    assert s.last_finished_round() is None and s.rounds().empty and s.allocation(0) is None
    with pytest.raises(InvalidEventError, match='never started'): s.end_round(0)
    s.start_round(0); s.start_round(0)           # an interrupted round may be started again
    s.record_allocation(0, {0: 3, 1: 0}); s.record_allocation(0, {0: 2, ('t', 1): 1})   # latest wins
    s.add_labels([dict(item_id=i, label='x') for i in range(3)], round=0)
    s.skip(9, round=0); s.undo(2, round=0)
    s.end_round(0)
    with pytest.raises(InvalidEventError, match='already ended'): s.end_round(0)
    with pytest.raises(InvalidEventError, match='start round 1'): s.start_round(0)
    s.start_round(1)
    assert s.last_finished_round() == 0
    assert s.allocation(0) == {0: 2, ('t', 1): 1}
    r = s.rounds()
    assert r['round'].tolist() == [0, 1] and r.finished.tolist() == [True, False]
    assert r.loc[0, ['labels', 'undos', 'skips', 'allocated']].tolist() == [3, 1, 1, 3]
    assert pd.isna(r.loc[1, 'ended_at'])
    with pytest.raises(InvalidEventError): s.record_allocation(1, {0: -1})
    with pytest.raises(InvalidEventError): s.record_allocation(1, {0: 1.5})
    with pytest.raises(InvalidEventError): s.record_allocation(1, [1, 2])
    with pytest.raises(InvalidEventError): s.start_round(None)

def test_export_roundtrip(tmp_path):
    s = LabelStore(':memory:', annotator='a')
    s.start_round(0); s.record_allocation(0, {('x', 1): 2})
    s.add_labels([dict(item_id=1, label='a', arm=('x', 1)), dict(item_id='b', label=2, arm=('x', 1))], round=0)
    s.flag(1, 'why')
    for view in ('current', 'events', 'conflicts', 'rounds'):
        df = s.to_pandas(view)
        back = pd.read_parquet(s.to_parquet(tmp_path / f'{view}.parquet', view=view))
        assert len(back) == len(df) and list(back.columns) == list(df.columns)
        assert len(pd.read_csv(s.to_csv(tmp_path / f'{view}.csv', view=view))) == len(df)
    ev = pd.read_parquet(tmp_path / 'events.parquet')
    assert json.loads(ev.data.iloc[1]) == {'allocation': [[['x', 1], 2]]}
    assert [json.loads(v) for v in pd.read_parquet(tmp_path / 'current.parquet').item_id] == [1, 'b']
    with pytest.raises(ParameterError): s.to_pandas('labels')

def test_pool_binding(path):
    LabelStore(path, pool_ids=['a', 'b', 'c'], annotator='x').add_label('a', 1)
    with LabelStore(path, pool_ids=np.array(['c', 'b', 'a'])) as s:    # order does not matter
        with pytest.raises(UnknownItemError, match='not in the pool'): s.add_label('d', 1)
    with pytest.raises(PoolMismatchError, match='3 ids'): LabelStore(path, pool_ids=['a', 'b'])
    with pytest.raises(DuplicateIdError): LabelStore(path, pool_ids=['a', 'a', 'b'])
    with LabelStore(path) as s: assert s.labeled_ids() == {'a'}              # nothing deleted
    assert isinstance(PoolMismatchError('x'), StoreError)

def test_newer_schema_touches_nothing(path):
    LabelStore(path, annotator='x').add_label(1, 'a')
    with sqlite3.connect(path) as c: c.execute('INSERT INTO umc_schema (version) VALUES (2)')
    def dump():
        with sqlite3.connect(path) as c:
            return [list(c.execute(f'SELECT * FROM {t}')) for t in ('umc_schema', 'umc_meta', 'umc_events')] + \
                   [sorted(c.execute("SELECT name, sql FROM sqlite_master"))]
    before = dump()
    with pytest.raises(SchemaVersionError, match='schema version 2'): LabelStore(path, pool_ids=[1, 2])
    assert dump() == before

def test_not_a_database(tmp_path):
    p = tmp_path / 'notes.txt'; p.write_text('hello, I am not a database' * 100)
    with pytest.raises(StoreError, match='cannot open the store'): LabelStore(p)
    assert p.read_text().startswith('hello')

def test_append_only_in_the_file(path):
    LabelStore(path, annotator='x').add_label(1, 'a')
    with sqlite3.connect(path) as c:
        for sql in ('DELETE FROM umc_events', "UPDATE umc_events SET label = '\"b\"'"):
            with pytest.raises(sqlite3.DatabaseError, match='append-only'): c.execute(sql)

# ---------------- hypothesis: bad input is refused by name, and nothing is written ----------------
H = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ids = st.one_of(st.integers(-2**62, 2**62), st.text(min_size=1).filter(lambda t: t.strip()))
blank = st.text(alphabet=' \t\n\r', max_size=4)
not_ids = st.one_of(st.none(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2), blank)

def nothing_written(s): return s.events().empty

@H
@given(item=ids, label=st.one_of(st.integers(), st.text(min_size=1).filter(lambda t: t.strip())))
def test_any_valid_id_and_label_round_trip(item, label):
    s = LabelStore(':memory:', annotator='h')
    s.add_label(item, label)
    cur = s.current_labels()
    assert cur.item_id.tolist() == [item] and cur.label.tolist() == [label]
    assert pool_fingerprint([item, 'zz-other' if item != 'zz-other' else 0]) == pool_fingerprint(
        [('zz-other' if item != 'zz-other' else 0), item])

@H
@given(item=not_ids)
def test_bad_ids_are_refused(item):
    s = LabelStore(':memory:', annotator='h')
    for call in (lambda: s.add_label(item, 'a'), lambda: s.skip(item), lambda: s.flag(item), lambda: s.undo(item)):
        with pytest.raises(InvalidEventError): call()
    with pytest.raises(InvalidEventError): s.add_labels([dict(item_id=1, label='a'), dict(item_id=item, label='a')])
    assert nothing_written(s)

@H
@given(allowed=st.sets(st.text(min_size=1, max_size=5).filter(str.strip), min_size=1, max_size=5),
       label=st.one_of(st.text(min_size=1, max_size=5).filter(str.strip), st.integers()), n_good=st.integers(0, 3))
def test_labels_outside_the_label_set(allowed, label, n_good):
    s = LabelStore(':memory:', labels=allowed, annotator='h')
    good = [dict(item_id=i, label=sorted(allowed)[0]) for i in range(n_good)]
    if label in allowed:
        s.add_labels(good + [dict(item_id=99, label=label)])
        assert len(s.events()) == n_good + 1
    else:
        with pytest.raises(UnknownLabelError, match='not in the store'): s.add_labels(good + [dict(item_id=99, label=label)])
        assert nothing_written(s)                  # the bulk call is all or nothing

@H
@given(kind=st.text(max_size=12).filter(lambda k: k not in EVENT_KINDS))
def test_unknown_event_kinds(kind):
    s = LabelStore(':memory:', annotator='h')
    with pytest.raises(InvalidEventError, match='unknown event kind'): s.record(kind, 1)
    with pytest.raises(InvalidEventError, match='unknown event kind'): s.events(kind)
    assert nothing_written(s)

@H
@given(score=st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.text(max_size=2), st.booleans()),
       rnd=st.one_of(st.integers(max_value=-1), st.floats(), st.text(min_size=1, max_size=2), st.booleans()),
       data=st.one_of(st.lists(st.integers(), max_size=2), st.just({'x': math.nan}), st.just({'x': object()}), st.text(max_size=2)),
       ann=st.one_of(blank, st.floats(), st.booleans()))
def test_bad_fields(score, rnd, data, ann):
    s = LabelStore(':memory:', annotator='h')
    for kw in (dict(score=score), dict(round=rnd), dict(data=data), dict(annotator=ann), dict(arm=1.5), dict(bogus=1)):
        with pytest.raises((InvalidEventError, TypeError)): s.add_label(1, 'a', **kw)
    with pytest.raises(InvalidEventError): s.add_labels([dict(item_id=1, label='a', bogus=1)])
    with pytest.raises(InvalidEventError): s.add_labels([dict(item_id=1)])
    with pytest.raises(InvalidEventError): s.add_labels(dict(item_id=1, label='a'))
    with pytest.raises(InvalidEventError): s.start_round(rnd)
    assert nothing_written(s)

@H
@given(ops=st.lists(st.tuples(st.sampled_from(['label', 'undo']), st.integers(0, 3), st.sampled_from('ab'),
                              st.sampled_from(['ana', 'ben'])), max_size=25))
def test_views_match_a_reference_model(ops):
    "current_labels and conflict flags equal a plain-Python replay of the same operations."
    s = LabelStore(':memory:')
    stacks = {}                        # item -> list of live labels [(label, annotator, conflict)]
    for op, item, label, ann in ops:
        live = stacks.setdefault(item, [])
        if op == 'label':
            top = live[-1] if live else None
            conflict = top is not None and top[0] != label and top[1] != ann
            s.add_label(item, label, annotator=ann)
            live.append((label, ann, conflict))
        elif live:
            s.undo(item, annotator=ann); live.pop()
        else:
            with pytest.raises(NothingToUndoError): s.undo(item, annotator=ann)
    want = {i: v[-1] for i, v in stacks.items() if v}
    cur = s.current_labels()
    got = {r.item_id: (r.label, r.annotator, bool(r.conflict)) for r in cur.itertuples()}
    assert got == want
    assert len(s.events()) == sum(1 for op, item, *_ in ops if op == 'label') + \
        sum(1 for e in s.events().itertuples() if e.kind == 'undo')
    assert all(isinstance(e, UMCError) for e in [InvalidEventError('x'), NothingToUndoError('x'), UnknownItemError('x')])
