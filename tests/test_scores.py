"Property tests of the ensemble scores (umc_nb.scores) with hypothesis."
import warnings
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra.numpy import arrays
from umc_nb.core import UMCError, InvalidProbabilitiesError, ShapeError, EmptyInputError, ParameterError, MaskError
from umc_nb.scores import score, reference_scores, umc_score, disagreement, predictive_entropy, score_stream, Scores

settings.register_profile('umc', deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('umc')

@st.composite
def ensembles(draw, max_n=40, max_m=5, max_c=8):
    "Random (N, M, C) probabilities, some with exact zeros and near-one-hot rows."
    n, m, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_m)), draw(st.integers(1, max_c))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    conc = draw(st.sampled_from([0.05, 0.5, 1.0, 10.0]))
    p = rng.dirichlet(np.full(c, conc), size=(n, m))
    if draw(st.booleans()): p[rng.random(p.shape) < 0.2] = 0
    p = p / np.where(p.sum(-1, keepdims=True) > 0, p.sum(-1, keepdims=True), 1)
    zero = p.sum(-1) == 0
    p[zero] = 1.0 / c
    return p.astype(np.float32)

@given(ensembles())
def test_matches_reference(p):
    s, r = score(p), reference_scores(p)
    np.testing.assert_allclose(s.entropy, r['entropy'], atol=2e-5)
    np.testing.assert_allclose(s.disagreement, r['disagreement'], atol=2e-5)
    np.testing.assert_allclose(s.margin, r['margin'], atol=2e-6)
    np.testing.assert_allclose(s.least_confidence, r['least_confidence'], atol=2e-6)

@given(ensembles())
def test_nonnegative_and_bounded(p):
    s = score(p)
    c = p.shape[-1]
    assert (s.entropy >= 0).all() and (s.disagreement >= 0).all()
    assert (s.disagreement <= s.entropy + 1e-5).all()          # D = H - mean H_i <= H
    assert (s.entropy <= np.log(c) + 1e-5).all()
    assert ((s.entropy_norm >= 0) & (s.entropy_norm <= 1 + 1e-5)).all()

@given(ensembles(), st.data())
def test_invariant_to_member_order_and_class_permutation(p, data):
    s = score(p)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    mp, cp = rng.permutation(p.shape[1]), rng.permutation(p.shape[2])
    t = score(p[:, mp][:, :, cp])
    np.testing.assert_allclose(t.entropy, s.entropy, atol=2e-5)
    np.testing.assert_allclose(t.disagreement, s.disagreement, atol=2e-5)
    np.testing.assert_allclose(t.margin, s.margin, atol=2e-6)

@given(ensembles(max_m=1), st.integers(1, 6))
def test_zero_disagreement_when_members_agree(p, m):
    same = np.repeat(p, m, axis=1)
    assert np.abs(score(same).disagreement).max() < 2e-5

@given(ensembles(max_n=200), st.integers(1, 60))
def test_chunked_equals_unchunked(p, chunk):
    a, b = score(p), score(p, chunk_size=chunk)
    for f in ('entropy', 'disagreement', 'margin', 'least_confidence'):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    streamed = Scores.concat(list(score_stream(p[s:s + chunk] for s in range(0, len(p), chunk))))
    np.testing.assert_array_equal(streamed.entropy, a.entropy)

@given(ensembles(max_m=5), st.data())
def test_mask_equals_dropping_members(p, data):
    n, m, _ = p.shape
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    if not keep.any(): keep[0] = True
    masked = score(p, mask=np.broadcast_to(keep, (n, m)))
    dropped = score(p[:, keep])
    np.testing.assert_allclose(masked.entropy, dropped.entropy, atol=2e-5)
    np.testing.assert_allclose(masked.disagreement, dropped.disagreement, atol=2e-5)

@given(ensembles(), st.floats(0, 1))
def test_umc_score_interpolates(p, alpha):
    s = score(p)
    np.testing.assert_allclose(umc_score(p, alpha), alpha * s.entropy + (1 - alpha) * s.disagreement, atol=1e-6)

def test_torch_in_torch_out():
    torch = pytest.importorskip('torch')
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 2)).astype(np.float32)
    out = disagreement(torch.from_numpy(p))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), disagreement(p))

def test_float64_input():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 2))
    np.testing.assert_allclose(predictive_entropy(p), reference_scores(p)['entropy'], atol=1e-5)

# --- bad input: always a named UMCError, never a bare numpy warning or a silent NaN -------------------------------

def _raises_named(f, kind):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(kind) as e: f()
    assert isinstance(e.value, UMCError) and str(e.value)

@given(ensembles(), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nonfinite_raises(p, bad, data):
    i = data.draw(st.integers(0, p.shape[0] - 1)); j = data.draw(st.integers(0, p.shape[1] - 1))
    q = p.copy(); q[i, j, 0] = bad
    _raises_named(lambda: score(q), InvalidProbabilitiesError)

@given(ensembles(), st.data())
def test_negative_or_unnormalised_raises(p, data):
    i = data.draw(st.integers(0, p.shape[0] - 1))
    q = p.copy(); q[i, 0] *= 1.5
    if abs(q[i, 0].sum() - 1) > 1e-3: _raises_named(lambda: score(q), InvalidProbabilitiesError)
    r = p.copy(); r[i, 0, 0] = -0.5
    _raises_named(lambda: score(r), InvalidProbabilitiesError)

@given(arrays(np.float32, st.sampled_from([(3,), (2, 3), (1, 2, 3, 4)]), elements=st.floats(0, 1, width=32)))
def test_wrong_rank_raises(a):
    _raises_named(lambda: score(a), ShapeError)

@pytest.mark.parametrize('shape', [(0, 2, 3), (2, 0, 3), (2, 3, 0)])
def test_empty_raises(shape):
    _raises_named(lambda: score(np.zeros(shape, np.float32)), EmptyInputError)

@given(st.one_of(st.floats(allow_nan=True), st.integers(-5, 5)).filter(lambda a: not (0 <= a <= 1)))
def test_alpha_outside_unit_interval_raises(alpha):
    p = np.full((2, 2, 2), 0.5, np.float32)
    _raises_named(lambda: umc_score(p, alpha=alpha), ParameterError)

def test_mask_leaving_sample_without_member_raises():
    p = np.full((3, 2, 2), 0.5, np.float32)
    mask = np.array([[1, 1], [0, 0], [1, 0]], bool)
    _raises_named(lambda: score(p, mask=mask), MaskError)

def test_mask_shape_mismatch_raises():
    _raises_named(lambda: score(np.full((3, 2, 2), 0.5, np.float32), mask=np.ones((3, 3), bool)), ShapeError)
