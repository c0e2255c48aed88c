"""Browser tests of the review dashboard: JupyterLab and Voila on loopback, driven by headless Chromium through Playwright.

They start their own servers (a random free port, a known token, a temporary HOME and Jupyter runtime/config dirs), click
class buttons and press keys, then check that the label store holds exactly those labels, that a screenshot shows the
cards, and that a payload with `<script>` / `onerror` is not executed. They print the time from a click to the next card
(median, p95); timings are never asserted.

Needs Debian `chromium` and the pip packages playwright, jupyterlab, voila, ipyevents (never `playwright install`).
Set UMC_REVIEW_SCREENSHOTS=<folder> to keep the screenshots and the timing figures.
"""
import json, os, secrets, shutil, signal, socket, statistics, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / 'nbs' / 'tutorials' / '02_label_in_notebook.ipynb'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run', '--disable-quic']

def _missing():
    if CHROMIUM is None: return 'chromium is not installed (apt-get install chromium)'
    for mod, pkg in (('playwright.sync_api', 'playwright'), ('jupyterlab', 'jupyterlab'), ('voila', 'voila'),
                     ('ipyevents', 'ipyevents')):
        try: __import__(mod)
        except ImportError: return f'{pkg} is not installed (pip install {pkg})'
    return None

pytestmark = pytest.mark.skipif(_missing() is not None, reason=f'browser test skipped: {_missing()}')

N_CLICKS, N_KEYS = 24, 6          # labels given by clicking class buttons and by digit keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def isolated_env(tmp: Path, **extra) -> dict:
    "Environment with a temporary HOME and Jupyter dirs, so nothing of the user's setup is read or written."
    env = dict(os.environ)
    for k in ('HOME', 'JUPYTER_RUNTIME_DIR', 'JUPYTER_CONFIG_DIR', 'JUPYTERLAB_SETTINGS_DIR', 'JUPYTERLAB_WORKSPACES_DIR', 'IPYTHONDIR'):
        d = tmp / k.lower(); d.mkdir(parents=True, exist_ok=True); env[k] = str(d)
    env.update(PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', **extra)
    return env

@contextmanager
def serve(cmd, env, port, cwd, log: Path, path='/', timeout=120):
    "Start a server, wait until it answers on 127.0.0.1:`port`, and stop it (and every process it started) afterwards."
    out = open(log, 'wb')
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None: raise RuntimeError(f'server exited ({proc.returncode}):\n{log.read_text()[-3000:]}')
            try:
                if path is None: socket.create_connection(('127.0.0.1', port), timeout=2).close()   # no request: a GET would run the page
                else: urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=2)
                break
            except Exception:
                if time.time() - t0 > timeout: raise RuntimeError(f'server did not answer in {timeout}s:\n{log.read_text()[-3000:]}')
                time.sleep(0.5)
        yield proc
    finally:
        _stop(proc); out.close()

def _stop(proc):
    "SIGTERM the server (it shuts its kernels down), then kill whatever of its descendants is left, by pid."
    try:
        import psutil
        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except Exception: kids = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
    for k in kids:
        try:
            if k.is_running(): k.kill()
        except Exception: pass

@contextmanager
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = b.new_page(viewport={'width': 1500, 'height': 1100})
            page.set_default_timeout(60_000)
            yield page
        finally: b.close()

# One labelling action in the page: click a class button (or press a key) of the first dashboard and wait until the next
# card is on screen; returns the id labelled, the label and the milliseconds from the click to the new card.
_ACT = """async ([mode, arg]) => {
  const root = document.querySelectorAll('.umc-review')[0];
  const card = () => root.querySelector('.umc-main .umc-card');
  const before = card().dataset.umcId;
  let label = null, t0 = performance.now();
  if (mode === 'click') {
    const task = card().dataset.umcTask;     // the buttons of the card's task (they follow the card within milliseconds)
    for (let k = 0; k < 200 && !(root.querySelectorAll('.umc-class')[arg] || {title: ''}).title.startsWith(task + ':'); k++)
      await new Promise(r => setTimeout(r, 10));
    const b = root.querySelectorAll('.umc-class')[arg]; label = b.title; t0 = performance.now(); b.click();
  }
  await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('no new card within 30 s after ' + mode)), 30000);
    const check = () => { const c = card(); if (c && c.dataset.umcId !== before) { clearTimeout(t); ok(); } else requestAnimationFrame(check); };
    check();
  });
  return {id: before, label: label, ms: performance.now() - t0, now: card().dataset.umcId};
}"""

def current_id(page) -> str:
    return page.locator('.umc-review').first.locator('.umc-main .umc-card').get_attribute('data-umc-id')

def wait_new_card(page, before, timeout=30_000):
    page.wait_for_function("""(b) => { const c = document.querySelectorAll('.umc-review')[0].querySelector('.umc-main .umc-card');
                               return c && c.dataset.umcId !== b; }""", arg=before, timeout=timeout)

def drive(page, who: str) -> tuple[dict, dict, list]:
    """Label by clicks and keys, undo one, skip one; returns (expected current labels, event counts, click->card ms)."""
    dash = page.locator('.umc-review').first
    dash.locator('.umc-main .umc-card').wait_for(state='visible', timeout=240_000)
    labels, ms = {}, []
    # a few real mouse clicks (Playwright moves the mouse and clicks), then timed clicks dispatched in the page
    for _ in range(3):
        before = current_id(page)
        btn = dash.locator('.umc-class').first
        lab = btn.get_attribute('title')
        btn.click(); wait_new_card(page, before)
        labels[before] = lab
    for k in range(N_CLICKS - 3):
        try: r = page.evaluate(_ACT, ['click', k % 2])
        except Exception:
            page.screenshot(path='/tmp/umc_review_failure.png')
            print('dashboard text at failure:', dash.inner_text()[:1500])
            raise
        labels[r['id']] = r['label']; ms.append(r['ms'])
    # keyboard: with the mouse over the dashboard, the digit on a class button labels the card
    dash.locator('.umc-main').hover()
    for _ in range(N_KEYS):
        before = current_id(page)
        btn = dash.locator('.umc-class').first
        text, lab = btn.inner_text(), btn.get_attribute('title')
        key = text.rsplit('[', 1)[1].rstrip(']').strip()
        t0 = time.perf_counter(); page.keyboard.press(key); wait_new_card(page, before)
        ms.append(1000 * (time.perf_counter() - t0))
        labels[before] = lab
    last = before
    before = current_id(page); page.keyboard.press('u'); wait_new_card(page, before)      # undo: back to the last card
    assert current_id(page) == last
    del labels[last]
    before = current_id(page); page.keyboard.press('s'); wait_new_card(page, before)      # skip it
    before = current_id(page); page.keyboard.press('n'); wait_new_card(page, before)
    before = current_id(page); page.keyboard.press('p'); wait_new_card(page, before)        # back (read the card first: no race)
    return labels, {'label': N_CLICKS + N_KEYS, 'undo': 1, 'skip': 1}, ms

def check_store(path, labels, counts, who):
    from umc_nb.store import LabelStore
    st = LabelStore(path)
    try:
        cur = st.current_labels()
        assert dict(zip(cur['item_id'], cur['label'])) == labels
        assert set(cur['annotator']) == {who} and cur['round'].notna().all() and cur['arm'].notna().all()
        ev = st.events()
        got = ev['kind'].value_counts().to_dict()
        assert {k: got.get(k, 0) for k in counts} == counts, got
    finally: st.close()

def figures(name, ms, shot):
    ms = sorted(ms)
    med, p95 = statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    line = f'{name}: click -> next card over {len(ms)} labels: median {med:.0f} ms, p95 {p95:.0f} ms (screenshot {shot})'
    print('\n' + line)
    keep = os.environ.get('UMC_REVIEW_SCREENSHOTS')
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / Path(shot).name)
        with open(Path(keep) / 'figures.jsonl', 'a') as f:
            f.write(json.dumps(dict(page=name, n=len(ms), median_ms=round(med, 1), p95_ms=round(p95, 1))) + '\n')
    return med, p95

def screenshot(page, path, explain=True):
    "Open the first cluster, show its first card's explanation, and screenshot the dashboard."
    dash = page.locator('.umc-review').first
    no = page.get_by_role('button', name='No', exact=True)      # JupyterLab's "get notified about news?" toast
    if no.count(): no.first.click()
    before = current_id(page)
    dash.locator('select').first.select_option(index=0)
    if current_id(page) == before: page.wait_for_timeout(500)
    else: wait_new_card(page, before)
    if explain:
        dash.locator('.umc-explain-btn').click()
        dash.locator('.umc-explain').wait_for(state='visible', timeout=120_000)
    page.mouse.move(0, 0)
    page.locator('.umc-review').first.screenshot(path=str(path))
    assert page.locator('.umc-review').first.locator('.umc-mini').count() > 0
    assert Path(path).stat().st_size > 10_000


def test_lab_tutorial(tmp_path):
    "JupyterLab: open the tutorial, run it, label by clicks and keys; the store holds exactly those labels; no script runs."
    work = tmp_path / 'work'; work.mkdir()
    nb = json.loads(TUTORIAL.read_text())
    nb.setdefault('metadata', {})['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    (work / 'tutorial.ipynb').write_text(json.dumps(nb))          # a kernelspec, so JupyterLab starts it without asking
    store, who, port, token = tmp_path / 'labels.sqlite', 'lab-tester', free_port(), secrets.token_hex(8)
    env = isolated_env(tmp_path, UMC_REVIEW_STORE=str(store), UMC_REVIEW_ANNOTATOR=who)
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}',
           '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')      # CI runs as root
    with serve(cmd, env, port, work, tmp_path / 'lab.log', path=f'/api/status?token={token}'), browser() as page:
        page.goto(f'http://127.0.0.1:{port}/lab/tree/tutorial.ipynb?token={token}')
        page.locator('.jp-Notebook').first.wait_for(state='visible', timeout=120_000)
        page.wait_for_timeout(2000)
        for _ in range(3):          # e.g. a kernel chooser: accept its default (the Python 3 kernel of this environment)
            dlg = page.locator('.jp-Dialog')
            if not dlg.count(): break
            print('JupyterLab dialog:', dlg.first.inner_text()[:200].replace('\n', ' | '))
            dlg.first.locator('.jp-Dialog-button.jp-mod-accept').first.click(); page.wait_for_timeout(1000)
        page.locator('.lm-MenuBar-item', has_text='Run').first.click()
        page.get_by_role('menuitem', name='Run All Cells', exact=True).click()
        labels, counts, ms = drive(page, who)
        screenshot(page, tmp_path / 'review_lab.png')
        # the pool with '<script>' and '<img onerror>' payloads: shown as text, nothing executed
        toy = page.locator('.umc-review').nth(1)
        toy.locator('.umc-main .umc-card').wait_for(state='visible')
        assert '<script>window.__umc_xss = 1</script>' in toy.locator('.umc-main').inner_text()
        toy.locator('.umc-mini').nth(1).wait_for(state='visible')
        assert '<img src=x onerror' in toy.inner_text()
        page.wait_for_timeout(500)
        assert page.evaluate('window.__umc_xss') is None
    check_store(store, labels, counts, who)
    figures('JupyterLab', ms, tmp_path / 'review_lab.png')


def test_voila_page(tmp_path):
    "`umc review` (Voila): label by clicks and keys on the standalone page; the store holds exactly those labels."
    store, who, port = tmp_path / 'labels.sqlite', 'voila-tester', free_port()
    env = isolated_env(tmp_path)
    cmd = [sys.executable, '-c', 'import sys; from umc_nb.cli import main; sys.exit(main())', 'review', '--store', str(store),
           '--port', str(port), '--budget', '40', '--annotator', who]
    with serve(cmd, env, port, tmp_path, tmp_path / 'voila.log', path=None, timeout=120) as proc, browser() as page:
        page.goto(f'http://127.0.0.1:{port}/', timeout=300_000)
        labels, counts, ms = drive(page, who)
        screenshot(page, tmp_path / 'review_voila.png')
        assert page.evaluate('window.__umc_xss') is None
    check_store(store, labels, counts, who)
    figures('Voila', ms, tmp_path / 'review_voila.png')
