"""The offline docs build (umc_nb.docs): a small synthetic site, the failures it must catch, a subset of the real site
(opened in headless Chromium: charts visible, nothing loaded from another host), and the full site (UMC_SLOW=1)."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest
import yaml

from umc_nb.docs import DocsBuildError, build_docs, check_site, main, remote_loads, sidebar_tree, site_config

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
slow = pytest.mark.skipif(not os.environ.get('UMC_SLOW'), reason='full docs build: set UMC_SLOW=1')


def nb(path, cells):
    "Write a notebook of `cells` (strings; 'md:...' is markdown) to `path`."
    n = nbformat.v4.new_notebook()
    n.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith('md:') else nbformat.v4.new_code_cell(c) for c in cells]
    n.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(n, str(path))


def site_dir(tmp):
    "An nbs folder with the project's _quarto.yml, nbdev.yml and styles.css."
    d = tmp / 'nbs'
    d.mkdir(parents=True)
    for f in ('_quarto.yml', 'nbdev.yml', 'styles.css'): shutil.copy(NBS / f, d / f)
    return d


CHART = "alt.Chart(pd.DataFrame({'x': list('abc'), 'y': [3, 1, 2]})).mark_bar().encode(x='x:N', y='y:Q')"
SLIDER = ("p = alt.param(value=1, bind=alt.binding_range(min=0, max=3, step=1), name='k')\n"
          "alt.Chart(pd.DataFrame({'x': [0, 1, 2, 3]})).mark_point().encode(x='x:Q').add_params(p).transform_filter(alt.datum.x <= p)")


@pytest.fixture(scope='module')
def small_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('site')
    d = site_dir(tmp)
    nb(d / 'index.ipynb', ['md:# tiny\n\n> A tiny site.', 'md:Start with [the chapter](01_chart.ipynb).'])
    nb(d / '01_chart.ipynb', ['md:# Charts\n\n> Charts and math.', '#| default_exp tiny_docs_demo',
                              'import altair as alt\nimport pandas as pd', CHART, SLIDER,
                              'md:## Math\n\nThe entropy $H(\\bar p) = -\\sum_c \\bar p_c \\log \\bar p_c$.',
                              '#| slow\nraise RuntimeError("slow cells are not run by the docs build")',
                              'import pandas as pd\npd.DataFrame({"a": [1, 2]})'])
    nb(d / 'tutorials' / '01_first.ipynb', ['md:# First steps\n\n> A tutorial.', 'print("hello from a tutorial")'])
    (d / 'images').mkdir()
    (d / 'images' / 'pic.png').write_bytes(b'\x89PNG fake')
    res = build_docs(d, n_workers=2, progress=False)
    return d, tmp / '_docs', res


def test_pages_exist_with_svg_charts_and_no_cdn(small_site):
    d, out, res = small_site
    assert sorted(p.href for p in res.pages) == ['chart.html', 'index.html', 'tutorials/first.html']
    for p in res.pages: assert (out / p.href).exists()
    page = (out / 'chart.html').read_text()
    assert page.count('<svg') >= 2 and res.charts == 2 and res.interactive == 1
    assert '<math' in page                                       # MathML, no MathJax
    assert 'Not run in the docs build' in page and 'slow cells are not run' in page   # the code is shown, not run
    assert 'class="dataframe"' in page
    assert '<script src="site_libs/vega-bundle.js"></script>' in page and (out / 'site_libs' / 'vega-bundle.js').exists()
    assert 'data-vl-chart="vl-chart-2"' in page
    for f in out.rglob('*.html'): assert remote_loads(f.read_text()) == [], f
    assert not re.search(r'<script[^>]+src="(https?:)?//', page)
    assert (out / 'images' / 'pic.png').exists()
    tut = (out / 'tutorials' / 'first.html').read_text()
    assert 'href="../site_libs/umc-docs.css"' in tut and 'hello from a tutorial' in tut
    assert '<div class="sidebar-section">Tutorials</div>' in tut
    assert 'href="chart.html"' in (out / 'index.html').read_text()   # .ipynb link -> page
    idx = (out / 'site_libs' / 'search-index.js').read_text()
    assert idx.startswith('window.UMC_SEARCH = ') and 'First steps' in idx


def test_site_check_passes_and_reuse_skips_execution(small_site, monkeypatch):
    d, out, res = small_site
    assert check_site(out, sidebar_tree(site_config(d), {p.src: p for p in res.pages})) == []
    import umc_nb.docs
    monkeypatch.setattr(umc_nb.docs, 'library_stamp', lambda: 'fixed')   # others may edit the library meanwhile
    build_docs(d, n_workers=1, progress=False)
    again = build_docs(d, n_workers=1, reuse=True, progress=False)
    assert again.executed == {} and len(again.pages) == 3
    (d / 'index.ipynb').write_text((d / 'index.ipynb').read_text().replace('A tiny site.', 'A tiny site, changed.'))
    third = build_docs(d, n_workers=1, reuse=True, progress=False)
    assert list(third.executed) == ['index.ipynb'] and 'changed' in (out / 'index.html').read_text()


def test_failures_are_reported_together(tmp_path):
    d = site_dir(tmp_path)
    nb(d / 'index.ipynb', ['md:# x'])
    nb(d / '01_ok.ipynb', ['md:# OK', 'import altair as alt\nimport pandas as pd', CHART])
    nb(d / '02_raises.ipynb', ['md:# Raises', 'x = 1', 'x / 0'])
    nb(d / '03_bad_chart.ipynb', ['md:# Bad chart', 'from IPython.display import display',
                                  "display({'application/vnd.vegalite.v6.json': {'mark': 'nope'}, 'text/plain': 'chart'}, raw=True)"])
    (d / 'sidebar.yml').write_text(yaml.safe_dump({'website': {'sidebar': {'contents': [
        'index.ipynb', '01_ok.ipynb', '02_raises.ipynb', '03_bad_chart.ipynb', '04_missing.ipynb']}}}))
    with pytest.raises(DocsBuildError) as e: build_docs(d, n_workers=2, progress=False)
    msgs = e.value.problems
    assert any(m.startswith('02_raises.ipynb: a cell raised') and 'cell 2 raised ZeroDivisionError' in m for m in msgs), msgs
    assert any('bad_chart.html: a chart does not render' in m for m in msgs), msgs
    assert any("the sidebar lists '04_missing.ipynb'" in m for m in msgs), msgs
    assert (tmp_path / '_docs' / 'ok.html').exists()                       # what could be built is there
    assert not (tmp_path / '_docs' / 'raises.html').exists()
    assert len(msgs) == 3


def test_cli_exit_codes(tmp_path, capsys):
    d = site_dir(tmp_path)
    nb(d / 'index.ipynb', ['md:# x', 'print(1)'])
    assert main(['--nbs', str(d), '--json', '--workers', '1']) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['pages'] == 1
    nb(d / '01_bad.ipynb', ['md:# Bad', 'raise ValueError("boom")'])
    assert main(['--nbs', str(d), '--workers', '1', '--reuse']) == 1
    assert 'docs build FAILED' in capsys.readouterr().err
    assert main(['--nbs', str(d), '--only', 'nothing*']) == 2


@pytest.fixture(scope='module')
def real_subset(tmp_path_factory):
    "The real index and charts chapter, built into a temporary folder (the fast pass's sample of the site)."
    tmp = tmp_path_factory.mktemp('real')
    res = build_docs(NBS, out=tmp / '_docs', proc=tmp / '_proc', only=['index.ipynb', '14_viz.ipynb'], n_workers=2, progress=False)
    return tmp / '_docs', res


def test_real_subset(real_subset):
    out, res = real_subset
    page = (out / 'viz.html').read_text()
    assert page.count('class="vl-chart') >= 5 and page.count('<svg') >= 5
    for api in ('umap_chart', 'posterior_chart', 'allocation_chart', 'cumulative_reward_chart'):
        assert f'id="{api}"' in page                         # show_doc entries, at nbdev's anchors
    assert 'https://umc-nb.github.io' not in re.sub(r'<meta[^>]*>', '', page)   # site links made relative
    assert remote_loads(page) == []
    assert (out / 'index.html').exists()


def test_real_subset_in_chromium(real_subset):
    "Open the charts page in headless Chromium: SVG charts are drawn, and nothing is requested from another host."
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    pw = pytest.importorskip('playwright.sync_api')
    if not chromium: pytest.skip('no chromium')
    out, _ = real_subset
    requests = []
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=['--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.on('request', lambda r: requests.append(r.url))
        page.goto((out / 'viz.html').as_uri())
        page.wait_for_load_state('load')
        n_svg = page.evaluate("document.querySelectorAll('.vl-chart svg').length")
        sizes = page.evaluate("[...document.querySelectorAll('.vl-chart svg')].map(s => s.getBoundingClientRect().width)")
        page.fill('#search-input', 'posterior')
        hits = page.evaluate("document.querySelectorAll('#search-results a').length")
        b.close()
    assert n_svg >= 5 and min(sizes) > 100
    assert hits >= 1
    assert all(u.startswith(('file://', 'data:', 'about:')) for u in requests), [u for u in requests if not u.startswith('file')]


@slow
def test_full_site(tmp_path):
    "The whole site, as `make docs` builds it: every notebook executes, every page and chart renders."
    res = build_docs(NBS, out=tmp_path / '_docs', proc=tmp_path / '_proc', n_workers=2, progress=True)
    hrefs = {p.href for p in res.pages}
    for need in ('index.html', 'scores.html', 'loop.html', 'viz.html', 'docs.html', 'tutorials/quick_start.html',
                 'tutorials/teach.html', 'tutorials/bring_your_own.html', 'tutorials/scale_out.html'):
        assert need in hrefs, need
    teach = (tmp_path / '_docs' / 'tutorials' / 'teach.html').read_text()
    assert 'data-vl-chart=' in teach and teach.count('<svg') >= 8       # the posterior slider stays interactive
    assert res.charts >= 30
