"Reliability of the SQLite label store: writers killed with SIGKILL mid-stream, and two writers at once."
import sqlite3, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_store_writer import kill_after, run_concurrent, check_concurrent  # noqa: E402
from umc_nb.store import LabelStore  # noqa: E402

def integrity(path):
    with sqlite3.connect(path) as c: return c.execute('PRAGMA integrity_check').fetchall()

@pytest.mark.parametrize('batch', [1, 25])
def test_sigkill_loses_no_acknowledged_label(tmp_path, batch):
    path = str(tmp_path / 'labels.db')
    acked, start = [], 0
    for n_acks in (60, 130, 200):   # three kills at different moments, each writer continuing after the last
        got = kill_after(path, n_acks, start, batch=batch)
        assert len(got) >= n_acks
        acked += got
        with LabelStore(path) as s:          # reopening replays/ignores the WAL; no half-written state
            ev = s.events('label')
            ids = set(ev.item_id)
            missing = set(acked) - ids
            assert not missing, f"acknowledged labels lost: {sorted(missing)[:10]}"
            # at most one call (one label, or one whole batch) committed but not yet acknowledged
            new = {i for i in ids if i >= start}
            assert set(got) <= new and len(new) - len(set(got)) in range(0, batch + 1)
            assert len(ev) % batch == 0, "a bulk call was half written"
            assert len(ev) == len(ids)
            start = max(ids) + 1
        assert integrity(path) == [('ok',)]
    with LabelStore(path, annotator='after') as s:   # still writable after the kills
        s.add_label(10**6, 'x')
        assert 10**6 in s.labeled_ids()

def test_two_concurrent_writers_lose_nothing_and_record_conflicts(tmp_path):
    path = str(tmp_path / 'labels.db')
    LabelStore(path).close()        # created once, so both writers open an existing store
    n = 150
    acks = run_concurrent(path, n, batch_a=1, batch_b=1)
    with LabelStore(path) as s:
        check_concurrent(s, n, acks)
    assert integrity(path) == [('ok',)]

def test_concurrent_bulk_and_single_writers(tmp_path):
    path = str(tmp_path / 'labels.db')   # not created beforehand: both writers race to create the schema
    n = 120
    acks = run_concurrent(path, n, batch_a=10, batch_b=1, pace=True)
    with LabelStore(path) as s:
        check_concurrent(s, n, acks)
        from umc_nb.store import schema_table
        import sqlalchemy as sa
        with s._tx(write=False) as con:
            assert con.execute(sa.select(sa.func.count()).select_from(schema_table)).scalar() == 1
    assert integrity(path) == [('ok',)]
