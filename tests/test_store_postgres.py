"""The label store against a real PostgreSQL server that this test module starts itself on loopback.

The server comes from Debian's `postgresql` package (binaries under /usr/lib/postgresql/*/bin); it is initialised
into a temporary directory, listens on a free port on 127.0.0.1 with its unix socket in that directory, and runs as
`nobody` when the tests run as root (postgres refuses root). Skipped, saying why, only where no server can start.
"""
import glob, os, pwd, shutil, socket, subprocess, sys, tempfile, uuid
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_store_writer import kill_after, run_concurrent, check_concurrent  # noqa: E402

psycopg = pytest.importorskip('psycopg', reason="psycopg 3 is not installed: pip install 'umc_nb[postgres]'")
from umc_nb.store import (LabelStore, PoolMismatchError, SchemaVersionError, StoreError,  # noqa: E402
                          InvalidEventError, UnknownLabelError)

def _bindir():
    for d in sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0, reverse=True):
        if os.path.exists(os.path.join(d, 'pg_ctl')) and os.path.exists(os.path.join(d, 'initdb')): return d
    exe = shutil.which('pg_ctl')
    return os.path.dirname(exe) if exe and shutil.which('initdb') else None

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def pg_server():
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (install Debian's `postgresql` package: apt-get install -y postgresql)")
    root = tempfile.mkdtemp(prefix='umc-pg-')
    prefix = []
    if os.geteuid() == 0:       # postgres refuses to run as root: run it as nobody
        runuser = shutil.which('runuser') or shutil.which('su')
        if runuser is None: pytest.skip('running as root and neither runuser nor su is available to drop privileges')
        pw = pwd.getpwnam('nobody')
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, '-u', 'nobody', '--'] if runuser.endswith('runuser') else None
    def run(args, **kw):
        if prefix is None:    # su -s /bin/sh nobody -c '...'
            import shlex
            args = ['su', '-s', '/bin/sh', 'nobody', '-c', ' '.join(map(shlex.quote, args))]
        else: args = prefix + args
        return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120, **kw)
    data, log = os.path.join(root, 'data'), os.path.join(root, 'server.log')
    r = run([os.path.join(bindir, 'initdb'), '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'])
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f'initdb failed, cannot start a PostgreSQL server here: {r.stderr.strip()[-500:]}')
    port = _free_port()
    r = run([os.path.join(bindir, 'pg_ctl'), '-D', data, '-l', log, '-w', '-t', '60', '-o',
             f'-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=50', 'start'])
    if r.returncode != 0:
        tail = Path(log).read_text()[-800:] if os.path.exists(log) else ''
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f'pg_ctl could not start a PostgreSQL server on 127.0.0.1:{port}: {r.stderr.strip()[-300:]} {tail}')
    try:
        yield f'postgresql://postgres@127.0.0.1:{port}'
    finally:
        run([os.path.join(bindir, 'pg_ctl'), '-D', data, '-m', 'fast', '-w', 'stop'])
        shutil.rmtree(root, ignore_errors=True)

@pytest.fixture
def pg_url(pg_server):
    "A fresh, empty database on the test server for each test."
    name = 't_' + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server + '/postgres', autocommit=True) as c: c.execute(f'CREATE DATABASE {name}')
    yield f'{pg_server}/{name}'
    with psycopg.connect(pg_server + '/postgres', autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')

def test_semantics_on_postgres(pg_url):
    with LabelStore(pg_url, pool_ids=range(10), labels=['cat', 'dog'], annotator='ana') as s:
        assert s.backend == 'postgresql'
        s.start_round(0)
        s.record_allocation(0, {('img', 0): 2, 'b': 1})
        s.add_labels([dict(item_id=i, label='cat', score=0.5, arm=('img', 0)) for i in range(3)], round=0, model_version='v1')
        s.add_label(1, 'dog', annotator='ben', round=0)
        s.undo(0)
        s.skip(4, round=0); s.flag(5, 'odd', round=0)
        s.end_round(0)
        cur = s.current_labels().set_index('item_id')
        assert cur.label.to_dict() == {1: 'dog', 2: 'cat'}
        assert cur.loc[1, 'conflict'] and not cur.loc[2, 'conflict']
        assert cur.loc[2, 'arm'] == ('img', 0) and cur.loc[2, 'model_version'] == 'v1'
        assert str(cur.ts.dt.tz) == 'UTC'
        assert s.allocation(0) == {('img', 0): 2, 'b': 1}
        assert s.last_finished_round() == 0
        assert list(s.events().kind) == ['round_started', 'allocation', 'label', 'label', 'label', 'label', 'undo',
                                         'skip', 'flag', 'round_ended']
        assert len(s.conflicts()) == 1
        with pytest.raises(UnknownLabelError): s.add_label(3, 'cow')
        with pytest.raises(InvalidEventError): s.start_round(0)
        n = len(s.events())
        # the database refuses to edit the log
        with psycopg.connect(pg_url) as c, pytest.raises(psycopg.Error, match='append-only'):
            c.execute('DELETE FROM umc_events')
        assert len(s.events()) == n
    # reopen: pool must match, newer schema refused, nothing changed
    with pytest.raises(PoolMismatchError): LabelStore(pg_url, pool_ids=range(11))
    with psycopg.connect(pg_url, autocommit=True) as c: c.execute('INSERT INTO umc_schema (version) VALUES (99)')
    with pytest.raises(SchemaVersionError, match='upgrade umc_nb'): LabelStore(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as c:
        assert c.execute('SELECT count(*) FROM umc_events').fetchone()[0] == n
        c.execute('DELETE FROM umc_schema WHERE version = 99')
    with LabelStore(pg_url, pool_ids=range(10)) as s: assert len(s.events()) == n

def test_unreachable_postgres_is_a_store_error():
    port = _free_port()   # nothing listens there
    with pytest.raises(StoreError, match='cannot open the store'):
        LabelStore(f'postgresql://postgres@127.0.0.1:{port}/x')

def test_sigkill_on_postgres(pg_url):
    acked = kill_after(pg_url, 50, 0, batch=1)
    with LabelStore(pg_url) as s:
        ids = set(s.events('label').item_id)
    assert set(acked) <= ids and len(ids) - len(set(acked)) <= 1

def test_two_concurrent_writers_on_postgres(pg_url):
    LabelStore(pg_url).close()
    n = 60
    acks = run_concurrent(pg_url, n, batch_a=1, batch_b=5, pace=True)
    with LabelStore(pg_url) as s:
        check_concurrent(s, n, acks)

def test_concurrent_schema_creation_on_postgres(pg_url):
    n = 25   # the database is empty: both writers race to create the tables
    acks = run_concurrent(pg_url, n)
    with LabelStore(pg_url) as s:
        check_concurrent(s, n, acks)
