"Benchmark runner (umc_nb.bench): JSON shape, version check, named errors, a tiny run on the fixture through the CLI."
import json
import math
import numpy as np
import pandas as pd
import pytest
from umc_nb.core import UMCError, BudgetError, ParameterError, UnknownNameError
from umc_nb.bench import (check_seeds, resolve_strategies, summarize, save_results, load_results, ResultsVersionError,
                          FORMAT, FORMAT_VERSION, run_bench, curves_frame, bench_charts, curve_chart, label_savings,
                          UMC_VARIANTS, CURVE_COLUMNS, format_summary)
from umc_nb.cli import main

def fake_curves(names=('umc', 'random', 'coreset', 'umc-ce'), seeds=(0, 1, 2), rounds=3, budget=10):
    rng = np.random.default_rng(0); rows = []
    for n in names:
        for s in seeds:
            for r in range(rounds + 1):
                rows.append(dict(strategy=n, seed=s, round=r, labels=r * budget, accuracy=0.5 + 0.03 * r + rng.normal(0, .01),
                                 worst_domain_accuracy=0.2 + 0.02 * r, ece=0.1 + rng.normal(0, .01), coverage=0 if r == 0 else 0.5 + 0.1 * (n == 'umc'),
                                 shifted_accuracy=0.3, shifted_ece=0.2 - 0.05 * (n == 'umc') + rng.normal(0, .01), seconds=1.0))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)

def fake_run(**kw):
    c = fake_curves(**kw)
    return dict(curves=c, reference={s: dict(accuracy=0.7) for s in c.seed.unique()},
                options=dict(strategies=list(c.strategy.unique()), seeds=sorted(c.seed.unique()), budget=10, rounds=3,
                             fixture=True, shifted_domains=['digits-corrupt']))

def test_seeds_and_names():
    assert check_seeds(5) == [0, 1, 2, 3, 4] and check_seeds('3,1') == [3, 1] and check_seeds([0, 9]) == [0, 9]
    for bad in [[0.5], ['a'], [True], [-1], [1, 1], '1,b', [], 0]:
        with pytest.raises(ParameterError): check_seeds(bad)
    assert resolve_strategies('umc,random') == ['umc', 'random']
    with pytest.raises(UnknownNameError, match='unknown strategy'): resolve_strategies(['umc', 'magic'])
    with pytest.raises(ParameterError): resolve_strategies(' , ')
    assert set(UMC_VARIANTS) <= set(resolve_strategies(None))

def test_json_shape_and_nulls():
    js = summarize(fake_run())
    text = json.dumps(js, allow_nan=False)                    # no NaN/inf survives: they are null
    back = json.loads(text)
    assert back['format'] == FORMAT and back['version'] == FORMAT_VERSION
    assert set(back['strategies']) == {'umc', 'random', 'coreset', 'umc-ce'}
    for d in back['strategies'].values():
        assert len(d['aulc']) == 3 and len(d['labels_to_95']) == 3
        for k in ['final_accuracy', 'final_worst_domain_accuracy', 'final_ece', 'final_coverage']: assert isinstance(d[k], float)
    assert back['strategies']['umc']['labels_to_95'] == [None] * 3          # 0.95 × 0.7 = 0.665 never reached -> inf -> null
    assert {'fewer_labels', 'shifted_ece', 'coverage'} <= set(back['targets'])
    assert back['targets']['shifted_ece']['mean'] > 0.15
    assert back['targets']['coverage']['per_baseline']['coreset']['mean'] == pytest.approx(0.2)
    assert back['comparisons']['aulc'][0]['test'] == 'anova'
    assert 'labels saved by UMC' in format_summary(back)

def test_label_savings_by_hand():
    c = pd.DataFrame(dict(strategy=['umc'] * 3 + ['margin'] * 3, seed=0, labels=[0, 10, 20] * 2,
                          accuracy=[0.5, 0.7, 0.8, 0.5, 0.6, 0.7]))
    v = label_savings(c, 'umc', ['margin'])['margin']
    assert v['per_seed'] == [pytest.approx(0.5)] and v['reached'] == 1     # UMC reaches 0.7 with 10 labels, margin with 20
    c2 = c.assign(accuracy=[0.5, 0.55, 0.6, 0.5, 0.6, 0.7])
    v2 = label_savings(c2, 'umc', ['margin'])['margin']
    assert math.isnan(v2['per_seed'][0]) and v2['reached'] == 0

def test_results_file_round_trip_and_version(tmp_path):
    js = summarize(fake_run())
    p = save_results(js, tmp_path / 'r.json')
    assert load_results(p)['strategies'].keys() == js['strategies'].keys()
    assert len(curves_frame(load_results(p))) == len(fake_curves())
    (tmp_path / 'v2.json').write_text(json.dumps({**js, 'version': FORMAT_VERSION + 1}))
    with pytest.raises(ResultsVersionError, match='format version'): load_results(tmp_path / 'v2.json')
    (tmp_path / 'x.json').write_text('[1, 2]')
    with pytest.raises(ResultsVersionError, match='not a `umc bench curves`'): load_results(tmp_path / 'x.json')
    (tmp_path / 'broken.json').write_text('{"format": ')
    with pytest.raises(ResultsVersionError, match='cannot read'): load_results(tmp_path / 'broken.json')
    assert issubclass(ResultsVersionError, UMCError)

def test_charts(tmp_path):
    c = fake_curves()
    ch = bench_charts(c, ['umc', 'random'])
    spec = ch.to_dict()
    assert 'vconcat' in spec
    with pytest.raises(UnknownNameError): curve_chart(c, 'nonsense')
    ch.save(str(tmp_path / 'c.png')); assert (tmp_path / 'c.png').stat().st_size > 1000

def test_cli_bad_input(capsys, tmp_path):
    assert main(['bench', 'curves', '--strategies', 'umc,magic']) == 2
    assert 'unknown strategy' in capsys.readouterr().err
    assert main(['bench', 'curves', '--seeds', 'two']) == 2
    assert main(['bench', 'curves', '--seed-list', '0,1.5']) == 2
    assert main(['bench', 'curves', '--rounds', '0']) == 2
    (tmp_path / 'old.json').write_text(json.dumps({'format': FORMAT, 'version': 0}))
    assert main(['bench', 'curves', '--read', str(tmp_path / 'old.json')]) == 2
    assert 'format version 0' in capsys.readouterr().err

def test_budget_beyond_pool():
    with pytest.raises(BudgetError, match='budget × rounds'):
        run_bench(['random'], 1, budget=500, rounds=3, progress=False)

def test_tiny_run_json(capsys, tmp_path):
    out = tmp_path / 'r.json'
    rc = main(['bench', 'curves', '--strategies', 'umc,random', '--seed-list', '3', '--rounds', '1', '--budget', '8',
               '--epochs', '2', '--embedder', 'pca', '--json', '--out', str(out)])
    assert rc == 0
    js = json.loads(capsys.readouterr().out)                    # exactly one JSON object on stdout
    assert js['options']['seeds'] == [3] and js['options']['budget'] == 8
    assert set(js['strategies']) == {'umc', 'random'}
    c = curves_frame(js)
    assert c.groupby('strategy')['labels'].apply(list).to_dict() == {'random': [0, 8], 'umc': [0, 8]}
    # round 0 is shared: same seed, same F before any curation
    assert c[c['round'] == 0].accuracy.nunique() == 1
    assert load_results(out)['strategies'].keys() == js['strategies'].keys()

@pytest.mark.slow
def test_small_run_deterministic(tmp_path):
    a = run_bench(['random', 'coreset'], [0, 1], budget=8, rounds=2, epochs=2, embedder='pca', progress=False, reference=False)
    b = run_bench(['random', 'coreset'], [0, 1], budget=8, rounds=2, epochs=2, embedder='pca', progress=False, reference=False)
    cols = ['strategy', 'seed', 'labels', 'accuracy', 'coverage']
    pd.testing.assert_frame_equal(a['curves'][cols], b['curves'][cols])
