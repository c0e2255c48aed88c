"The curation loop as a user runs it: `umc demo` killed and resumed, resuming equals running through, bad input."
import json, os, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from umc_nb.core import UMCError, UnknownLabelError
from umc_nb.data import load_benchmark
from umc_nb.loop import Curator, SimulatedAnnotator
from umc_nb.store import LabelStore, PoolMismatchError, UnknownItemError

UMC = [str(Path(sys.executable).parent / 'umc')]
FAST = ['--fixture', '--embedder', 'pca', '--epochs', '5']

@pytest.fixture(scope='module')
def bm(): return load_benchmark(fixture=True)

def _labels(db: Path) -> int:
    "Current labels in a store file, read with plain sqlite3 (no umc code)."
    if not db.exists(): return 0
    try:
        with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=30) as con:
            return con.execute("select count(*) from umc_events where kind='label'").fetchone()[0]
    except sqlite3.OperationalError: return 0

def _demo(out, *extra, timeout=900):
    return subprocess.run(UMC + ['demo', *FAST, '--out', str(out), *extra], capture_output=True, text=True, timeout=timeout)

def test_cli_module_runs():
    r = subprocess.run(UMC + ['--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'demo' in r.stdout

def test_demo_killed_twice_then_resumed(tmp_path):
    "SIGKILL `umc demo` mid-run twice; run again: exactly rounds x budget labels, none twice, every round finished."
    out, db = tmp_path / 'demo', tmp_path / 'demo' / 'store.sqlite'
    rounds, budget = 3, 12
    for kill_after in (1, budget + 3):          # during round 1's labels, then during round 2
        p = subprocess.Popen(UMC + ['demo', *FAST, '--rounds', str(rounds), '--budget', str(budget), '--out', str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while _labels(db) < kill_after and p.poll() is None and time.time() - t0 < 600: time.sleep(0.05)
        assert p.poll() is None, f"umc demo ended by itself (exit {p.returncode}) before it could be killed"
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert 0 < _labels(db) < rounds * budget
    r = _demo(out, '--rounds', str(rounds), '--budget', str(budget), '--json')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res['rounds'] == rounds and res['labels'] == rounds * budget
    assert [x['round'] for x in res['per_round']] == list(range(1, rounds + 1))
    assert set(res['per_round'][0]) >= {'round', 'labels', 'accuracy', 'worst_domain_accuracy', 'ece', 'coverage'}
    assert Path(res['report']).exists() and '<svg' in Path(res['report']).read_text()
    st = LabelStore(db)
    cur = st.current_labels()
    assert len(cur) == rounds * budget and cur['item_id'].is_unique
    lab = st.events('label')
    assert lab['item_id'].is_unique, "an item was labelled twice"
    assert st.rounds()['finished'].all()
    for c in ('annotator', 'round', 'arm', 'score', 'model_version', 'ts'): assert lab[c].notna().all(), c

def test_demo_on_a_finished_store_does_nothing_more(tmp_path):
    out = tmp_path / 'd'
    assert _demo(out, '--rounds', '1', '--budget', '5').returncode == 0
    r = _demo(out, '--rounds', '1', '--budget', '5', '--json')
    assert r.returncode == 0 and json.loads(r.stdout)['labels'] == 5

def test_resuming_equals_running_through(bm, tmp_path):
    "A new Curator on the store continues exactly as the first would have: same labels, same order of arms."
    kw = dict(budget=10, router={'embedder': 'pca'}, train={'max_epochs': 5}, progress=False)
    a = Curator.from_benchmark(bm, tmp_path / 'a.sqlite', **kw); a.run(2)
    b = Curator.from_benchmark(bm, tmp_path / 'b.sqlite', **kw); b.run(1)
    b2 = Curator.from_benchmark(bm, tmp_path / 'b.sqlite', **kw); b2.run(2)
    la, lb = a.store.current_labels(), b2.store.current_labels()
    assert list(la['item_id']) == list(lb['item_id'])
    assert list(la['arm']) == list(lb['arm'])

def test_store_of_another_pool_is_refused_and_kept(bm, tmp_path):
    db = tmp_path / 's.sqlite'
    with LabelStore(db, pool_ids=['x', 'y']) as st: st.add_label('x', 'digit:1')
    with pytest.raises(PoolMismatchError, match='another pool'): Curator.from_benchmark(bm, db, progress=False)
    with LabelStore(db) as st: assert len(st.current_labels()) == 1

def test_label_for_an_unknown_id_is_refused(bm, tmp_path):
    cur = Curator.from_benchmark(bm, tmp_path / 's.sqlite', progress=False)
    with pytest.raises(UnknownItemError): cur.store.add_label('not-in-the-pool', 'digit:1')

def test_annotator_label_of_another_task_is_refused(bm, tmp_path):
    class OtherTask:
        name = 'confused'
        def annotate(self, pool, ids): return ['supersense:noun.animal' if not str(i).startswith('wordnet') else 'digit:1' for i in ids]
    cur = Curator.from_benchmark(bm, tmp_path / 's.sqlite', annotator=OtherTask(), budget=5,
                                 router={'embedder': 'pca'}, retrain=False, progress=False)
    with pytest.raises(UnknownLabelError, match='another task'): cur.run_round()
    assert len(cur.store.current_labels()) == 0

def test_noisy_simulated_annotator_stays_in_task(bm):
    ann = SimulatedAnnotator(bm.oracle, noise=1.0, random_state=0)
    ids = bm.pool.ids[:50]
    got, truth = ann.annotate(bm.pool, ids), bm.oracle.label(ids)
    assert all(g != t and g.split(':')[0] == t.split(':')[0] for g, t in zip(got, truth)
               if len(bm.pool.tasks[t.split(':')[0]]) > 1)

@pytest.mark.parametrize('bad', [dict(budget=0), dict(alpha=2.0), dict(beta=-1)])
def test_bad_parameters(bm, tmp_path, bad):
    cur = Curator.from_benchmark(bm, tmp_path / 's.sqlite', progress=False, **bad)
    with pytest.raises(UMCError): cur.run_round()
