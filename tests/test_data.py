"Tests of umc_nb.data / umc_nb.specialists: bad configuration, cache damage and recovery, fixture round trips, CLI."
import io, json, os, shutil, warnings, zipfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st

from umc_nb.core import UMCError, UnknownNameError, ParameterError
from umc_nb import data as D
from umc_nb import specialists as S

slow = pytest.mark.skipif(not os.environ.get('UMC_SLOW'), reason='slow: set UMC_SLOW=1')
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NAMES = list(D.DOMAINS)


@pytest.fixture(scope='module')
def bm():
    return D.load_benchmark(fixture=True)


# ---- bad configuration: a named UMCError, never a stray numpy/KeyError ----

@FAST
@given(st.lists(st.sampled_from(NAMES + ['mnist', 'imdb', '', 'WordNet']), min_size=1, max_size=6))
def test_domains_known_or_named_error(domains):
    try: c = D.BenchmarkConfig(domains=domains, unseen=None).resolved()
    except UMCError as e:
        assert isinstance(e, (UnknownNameError, ParameterError)), e
        assert str(e)
    else:
        assert set(c.domains) <= set(NAMES) and abs(sum(c.proportions.values()) - 1) < 1e-9


@FAST
@given(st.dictionaries(st.sampled_from(['breast', 'dna', 'landsat', 'nope']),
                       st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-2, 2), st.text(max_size=2)),
                       min_size=1, max_size=4))
def test_proportions_sum_to_one_or_named_error(props):
    try: c = D.BenchmarkConfig(domains=[d for d in props if d != 'nope'] or None, proportions=props, unseen=None).resolved()
    except UMCError as e: assert str(e)
    else:
        vals = np.array(list(c.proportions.values()))
        assert (vals >= 0).all() and abs(vals.sum() - 1) < 1e-6


@FAST
@given(pool=st.integers(-5, 3000), test=st.integers(-2, 400), seed_size=st.integers(-1, 400))
def test_sizes_fit_or_size_error(pool, test, seed_size):
    try: b = D.load_benchmark(fixture=True, pool_size=pool, test_size=test, seed_size=seed_size, specialists=False)
    except UMCError as e: assert str(e)
    else:
        assert len(b.pool) == pool and (b.domains.n_test == test).all()
        assert (b.domains[b.domains.seen].n_seed == seed_size).all()


def test_size_error_says_what_to_change():
    with pytest.raises(D.SizeError, match="domain 'breast' needs .* Lower pool_size"):
        D.load_benchmark(fixture=True, pool_size=790, proportions={d: (0.5 if d == 'breast' else 0.5 / 7) for d in NAMES},
                         specialists=False)


def test_unseen_must_share_space_and_task():
    with pytest.raises(ParameterError, match='shares its feature space'):
        D.BenchmarkConfig(unseen=['wordnet']).resolved()
    with pytest.raises(UnknownNameError, match="unseen names an unknown domain 'svhn'"):
        D.BenchmarkConfig(unseen=['svhn']).resolved()
    c = D.BenchmarkConfig(unseen=['digits-print', 'digits-corrupt']).resolved()   # digits-hand stays seen
    assert c.seen == ['digits-hand', 'wordnet', 'landsat', 'breast', 'vehicle', 'dna']


# ---- the cache: damaged or partial files are rebuilt, never a traceback ----

def _damage(path: Path, how: str):
    raw = path.read_bytes()
    if how == 'truncate': path.write_bytes(raw[: len(raw) // 2])
    elif how == 'empty': path.write_bytes(b'')
    elif how == 'garbage': path.write_bytes(os.urandom(300))
    elif how == 'pickle':   # an npz whose array needs pickle (object dtype) must not be unpickled
        with open(path, 'wb') as f: np.savez(f, X=np.array([{'a': 1}], dtype=object), meta=np.array('{}'))
    elif how == 'nometa':
        with open(path, 'wb') as f: np.savez(f, X=np.zeros((2, 2)))
    elif how == 'version':
        src = D.load_source(path); src.meta = {}
        D.save_source(src, path)
        with zipfile.ZipFile(path) as z: pass
        txt = json.dumps(dict(name=src.name, classes=src.classes, version='v0'))
        with open(path, 'wb') as f:
            np.savez(f, X=src.X, y=src.y, payload=src.payload, groups=src.groups, meta=np.array(txt))
    elif how == 'lengths':
        src = D.load_source(path)
        with open(path, 'wb') as f:
            np.savez(f, X=src.X[:-3], y=src.y, payload=src.payload, groups=src.groups,
                     meta=np.array(json.dumps(dict(src.meta, name=src.name, classes=src.classes, version=D.CACHE_VERSION))))


@pytest.mark.parametrize('how', ['truncate', 'empty', 'garbage', 'pickle', 'nometa', 'version', 'lengths'])
def test_damaged_source_is_rebuilt(tmp_path, how):
    good = D.get_source('digits-hand', tmp_path)
    path = D.source_path('digits-hand', tmp_path)
    _damage(path, how)
    with pytest.raises(D.CacheError):
        D.load_source(path)
    status = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        again = D.get_source('digits-hand', tmp_path, status=status)
    assert status['digits-hand'].startswith('built')
    np.testing.assert_array_equal(again.X, good.X)
    assert D.get_source('digits-hand', tmp_path, status=status) is not None and status['digits-hand'] == 'cached'


def test_leftover_temp_file_is_ignored(tmp_path):
    D.get_source('breast', tmp_path)
    p = D.source_path('breast', tmp_path)
    (p.parent / f'.{p.name}.12345.tmp').write_bytes(b'half a file')   # a killed writer leaves only a temp file
    st_ = {}; D.get_source('breast', tmp_path, status=st_)
    assert st_['breast'] == 'cached'


@pytest.mark.parametrize('how', ['json', 'weights', 'missing'])
def test_damaged_specialists_are_retrained(tmp_path, how):
    cfg = D.BenchmarkConfig(pool_size=200, test_size=40, seed_size=50, domains=['digits-hand', 'breast'], unseen=None)
    src = D.fixture_sources(cfg.resolved().domains)
    sp = D.assemble(src, cfg)
    S._memory.clear()
    first = S.get_specialists(*sp['seed'], cfg, cache=tmp_path, progress=False)
    stems = sorted(f.with_suffix('') for f in (tmp_path / D.CACHE_VERSION / 'specialists').glob('*.json'))
    assert len(stems) == 2
    d = stems[0]
    js, st_ = d.with_name(d.name + '.json'), d.with_name(d.name + '.safetensors')
    if how == 'json': js.write_text('{"members": [{"kind": "lr"')
    elif how == 'weights': st_.write_bytes(b'\x00' * 10)
    else: st_.unlink()
    S._memory.clear()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        again = S.get_specialists(*sp['seed'], cfg, cache=tmp_path, progress=False)
    assert any('damaged or partial' in str(x.message) for x in w)
    X = sp['seed'][0].X('image8')
    for a, b in zip(first, again):
        if a.space == 'image8': np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-5)
    S.load_members(d)   # rewritten whole


# ---- the fixture and the Pool ----

def test_fixture_is_small_and_safe():
    files = sorted(D.FIXTURE_DIR.glob('*.npz'))
    assert {f.stem for f in files} == set(NAMES)
    assert sum(f.stat().st_size for f in files) < 3 * 2**20
    for f in files:
        with np.load(f, allow_pickle=False) as z:   # no object arrays anywhere
            assert all(z[k].dtype != object for k in z.files)


def test_fixture_round_trip(tmp_path):
    for name, src in D.fixture_sources().items():
        D.save_source(src, tmp_path / f'{name}.npz')
        back = D.load_source(tmp_path / f'{name}.npz')
        np.testing.assert_array_equal(back.X, src.X); np.testing.assert_array_equal(back.y, src.y)
        np.testing.assert_array_equal(back.payload, src.payload); assert back.classes == src.classes


def test_pool_contract(bm):
    p = bm.pool
    assert len(set(p.ids)) == len(p) and not set(p.ids) & set(bm.test.ids) and not set(p.ids) & set(bm.seed.ids)
    assert set(p.modality.values()) <= {'image', 'text', 'table'}
    for s in p.features:
        rows = p.rows(s)
        assert (np.diff(rows) > 0).all() and p.X(s).shape[0] == len(rows) and p.X(s).dtype == np.float32
        np.testing.assert_array_equal(p.X(s, rows[::-1]), p.X(s)[::-1])
    kinds = {p.modality[p.space[i]]: p.payload_of(i) for i in range(len(p))}
    assert isinstance(kinds['text'], str) and isinstance(kinds['table'], dict) and kinds['image'].shape == (8, 8)
    lab = bm.oracle.label(p.ids)
    assert set(lab) <= set(p.labels) and all(l.startswith(f'{t}:') for l, t in zip(lab, p.task))
    sub = p.subset(np.arange(len(p))[::-7])
    i = 3; j = np.arange(len(p))[::-7][i]
    np.testing.assert_array_equal(sub.X(sub.space[i], [i]), p.X(p.space[j], [j]))
    assert sub.ids[i] == p.ids[j]
    with pytest.raises(UnknownNameError): bm.test_oracle.label(p.ids[:1])


def test_ids_stable_across_configs():
    a = D.load_benchmark(fixture=True, specialists=False)
    b = D.load_benchmark(fixture=True, pool_size=500, specialists=False)
    c = D.load_benchmark(fixture=True, seed=1, specialists=False)
    assert set(b.test.ids) == set(a.test.ids)           # test split does not depend on the pool size
    assert set(c.test.ids) != set(a.test.ids)           # but on the seed
    ta, tc = dict(zip(a.test.ids, a.test_oracle.label(a.test.ids))), dict(zip(c.test.ids, c.test_oracle.label(c.test.ids)))
    assert all(ta[i] == tc[i] for i in set(ta) & set(tc))   # same id, same sample, same label


def test_specialists_interface(bm):
    assert len(bm.specialists) == 21 and len({m.name for m in bm.specialists}) == 21
    for m in bm.specialists:
        assert m.space in bm.pool.features and set(m.classes_) <= set(bm.labels)
        assert all(c.startswith(m.task + ':') for c in m.classes_)
        p = m.predict_proba(bm.test.X(m.space))
        assert p.shape == (len(bm.test.rows(m.space)), len(m.classes_)) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert not any(m.domain == 'digits-corrupt' for m in bm.specialists)   # unseen: no members of its own
    cnn = next(m for m in bm.specialists if m.kind == 'cnn')
    assert cnn.to_input(bm.pool.X('image8')[:2]).shape == (2, 1, 8, 8) and hasattr(cnn.module, cnn.target_layer)


def test_ensemble_accepts_members(bm):
    E = pytest.importorskip('umc_nb.ensemble')
    ens = E.Ensemble(bm.specialists, bm.pool.labels)
    probs, mask = ens.predict_proba(bm.pool)
    assert probs.shape == (len(bm.pool), 21, len(bm.pool.labels)) and mask.any(1).all()


# ---- the command ----

def test_umc_data_json_on_fixture():
    from umc_nb.cli import main
    buf = io.StringIO()
    with redirect_stdout(buf): rc = main(['data', '--fixture', '--json'])
    assert rc in (0, None)
    out = json.loads(buf.getvalue())
    assert {d['name'] for d in out['domains']} == set(NAMES)
    for d in out['domains']:
        assert {'name', 'modality', 'task', 'n_classes', 'n_pool', 'n_test'} <= set(d)
    assert 'seconds' in out['prepare']


def test_umc_data_bad_input_is_one_line(capsys):
    from umc_nb.cli import main
    rc = main(['data', '--fixture', '--domains', 'digits-hand,mnist'])
    assert rc == 2 and "no domain named 'mnist'" in capsys.readouterr().err
    rc = main(['data', '--fixture', '--proportions', 'breast=0.5,dna=0.4', '--domains', 'breast,dna'])
    assert rc == 2 and 'sum to 0.9' in capsys.readouterr().err


@slow
def test_full_benchmark_from_cache():
    b = D.load_benchmark()
    assert len(b.pool) == 6000 and len(b.domains) == 8
    assert (b.domains.n_test == 200).all() and b.domains.set_index('name').n_pool['breast'] == 180


def test_missing_source_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(D, '_roots', lambda cache: [tmp_path / 'nothing-here'])
    with pytest.raises(D.DataSourceError, match=r"2 source\(s\) missing: wordnet, dna\. To fix: apt-get install r-cran-mlbench; "
                                                 r"apt-get install wordnet-base"):
        D.load_benchmark(domains=['wordnet', 'dna', 'breast'], unseen=None, cache=tmp_path, fetch=False, specialists=False,
                         pool_size=100, test_size=10, seed_size=10)
    status = {}
    with pytest.raises(D.DataSourceError):
        D.load_benchmark(domains=['landsat', 'breast'], unseen=None, cache=tmp_path, fetch=False, specialists=False,
                         pool_size=100, test_size=10, seed_size=10, status=status)
    assert status['landsat'].startswith('MISSING') and 'apt-get install r-cran-mlbench' in status['landsat']
    assert not status['breast'].startswith('MISSING')      # the other sources are still prepared
