"""Helper script for the store reliability tests (run as a subprocess; it holds no tests itself).

    python tests/test_store_writer.py URL ANNOTATOR LABEL START COUNT [BATCH] [REVERSE|wait]

Labels items START..START+COUNT-1 with LABEL, one transaction per call (BATCH=1: `add_label`) or per BATCH items
(`add_labels`), and prints `ack <item_id>` for every label whose call has returned (i.e. is committed).
With a 7th argument containing `wait`, it prints `ready` and waits for a line on stdin before writing (a start
barrier, so two writers really run at the same time); with `pace`, it sleeps 3 ms after each call.
"""
import sys, time

def main(argv):
    from umc_nb.store import LabelStore
    url, annotator, label, start, count = argv[:5]
    batch = int(argv[5]) if len(argv) > 5 else 1
    mode = argv[6] if len(argv) > 6 else ''
    items = list(range(int(start), int(start) + int(count)))
    if 'reverse' in mode: items = items[::-1]
    store = LabelStore(url, annotator=annotator)
    print('ready', flush=True)
    if 'wait' in mode: sys.stdin.readline()
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        if batch == 1: store.add_label(chunk[0], label, round=0, arm=chunk[0] % 3, score=0.5, model_version='w1')
        else: store.add_labels([dict(item_id=j, label=label) for j in chunk], round=0, arm=0, model_version='w1')
        sys.stdout.write(''.join(f'ack {j}\n' for j in chunk)); sys.stdout.flush()
        if 'pace' in mode: time.sleep(0.003)   # a (fast) human pace: gives the other writer a turn at the lock
    store.close()
    print('done', flush=True)

if __name__ == '__main__': main(sys.argv[1:])


# ---- helpers shared by tests/test_store_reliability.py and tests/test_store_postgres.py ----
import os, signal, subprocess, time
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())
ROOT = str(Path(__file__).resolve().parents[1])

def start_writer(url, annotator, label, start, count, batch=1, mode=''):
    "Start a writer process; its stdout is a pipe of `ack <id>` lines."
    args = [sys.executable, SCRIPT, url, annotator, label, str(start), str(count), str(batch), mode or '-']
    env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)

def acks_of(lines):
    return [int(l.split()[1]) for l in lines if l.startswith('ack ')]

def kill_after(url, n_acks, start, count=100_000, batch=1, timeout=120):
    "Start a writer, SIGKILL it as soon as it has acknowledged `n_acks` labels; return every acknowledged id."
    p = start_writer(url, 'killed', 'k', start, count, batch)
    lines, t0 = [], time.monotonic()
    try:
        while len(acks_of(lines)) < n_acks:
            line = p.stdout.readline()
            if not line:
                raise AssertionError(f"writer ended early (rc={p.wait()}): {p.stderr.read()[-2000:]}")
            lines.append(line)
            if time.monotonic() - t0 > timeout: raise AssertionError('writer too slow')
        os.kill(p.pid, signal.SIGKILL)
        rest, _ = p.communicate(timeout=60)   # lines flushed before the kill are acknowledged too
        lines += rest.splitlines()
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL, p.returncode
    return acks_of(lines)

def run_concurrent(url, n_items, batch_a=1, batch_b=1, pace=False, timeout=300):
    "Two writers label the same items (a: 'a' in order, b: 'b' in reverse) at the same time; return their acks."
    pa = start_writer(url, 'alice', 'a', 0, n_items, batch_a, mode='wait' + (',pace' if pace else ''))
    pb = start_writer(url, 'bob', 'b', 0, n_items, batch_b, mode='wait,reverse' + (',pace' if pace else ''))
    for p in (pa, pb):           # both have opened the store: start them together
        line = p.stdout.readline()
        assert line == 'ready\n', (line, p.stderr.read()[-3000:] if p.poll() is not None else '')
    for p in (pa, pb): p.stdin.write('go\n'); p.stdin.flush()
    out = []
    for p in (pa, pb):
        so, se = p.communicate(timeout=timeout)
        assert p.returncode == 0, se[-3000:]
        assert so.splitlines()[-1] == 'done'
        out.append(acks_of(so.splitlines()))
    return out

def check_concurrent(store, n_items, acks):
    "Every label of both writers is there; for each item exactly the later label is a recorded conflict."
    assert sorted(acks[0]) == list(range(n_items)) and sorted(acks[1]) == list(range(n_items))
    ev = store.events('label')
    assert len(ev) == 2 * n_items
    assert sorted(ev.loc[ev.annotator == 'alice', 'item_id']) == list(range(n_items))
    assert sorted(ev.loc[ev.annotator == 'bob', 'item_id']) == list(range(n_items))
    for item, g in ev.groupby('item_id'):
        g = g.sort_values('event_id')
        assert g.conflict.tolist() == [False, True], (item, g)
        assert int(g.conflict_with.iloc[1]) == int(g.event_id.iloc[0])
    cur = store.current_labels().set_index('item_id')
    last = ev.sort_values('event_id').groupby('item_id').last()
    assert (cur.loc[last.index, 'label'] == last['label']).all()   # last writer wins
    assert cur.conflict.all()
    c = store.conflicts()
    assert len(c) == n_items and set(c.item_id) == set(range(n_items))
    # both writers really interleaved: each wrote some of the first labels
    first = ev.sort_values('event_id').groupby('item_id').first()
    return (first.annotator == 'alice').sum(), (first.annotator == 'bob').sum()
