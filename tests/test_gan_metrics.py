"""GAN metrics on synthetic feature sets with known answers."""
import numpy as np
import pytest

from trainer.gan import metrics as gm


def _features(n=400, d=16, seed=0, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mixing) * scale + shift


def test_fid_of_a_set_against_itself_is_zero_and_large_against_noise():
    a = _features()
    assert gm.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    same_distribution = gm.fid(a, _features(seed=1))
    noise = gm.fid(a, np.random.default_rng(2).uniform(-3, 3, a.shape))
    assert same_distribution < 0.5
    assert noise > 20 * same_distribution


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # |mu|^2 = 4; traces: (1 + 9 - 2*3) + (4 + 1 - 2*2) = 4 + 1
    assert gm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(9.0)


def test_kid_near_zero_for_one_distribution_and_large_against_noise():
    a, b = _features(seed=0), _features(seed=1)
    same_mean, same_std = gm.kid(a, b, subsets=20, subset_size=200)
    noise_mean, _ = gm.kid(a, np.random.default_rng(2).uniform(-3, 3, a.shape), subsets=20,
                           subset_size=200)
    assert abs(same_mean) < 3 * same_std + 0.01
    assert noise_mean > 50 * max(abs(same_mean), 1e-3)


def test_kid_of_a_set_against_itself_is_near_zero():
    a = _features(n=400)
    mean, _ = gm.kid(a, a, subsets=2, subset_size=400)
    noise_mean, _ = gm.kid(a, np.random.default_rng(2).uniform(-3, 3, a.shape), subsets=2,
                           subset_size=400)
    # Identical rows in both subsets leave only the O(1/n) diagonal term:
    # MMD_u^2(X, X) = -2/(m-1) * (mean k(x_i, x_i) - mean k(x_i, x_j)).
    kernel = (a @ a.T / a.shape[1] + 1) ** 3
    expected = -2 / (len(a) - 1) * (np.diag(kernel).mean() - kernel.mean())
    assert mean == pytest.approx(expected, rel=1e-9)
    assert abs(mean) < 0.05 * noise_mean


def test_c2st_near_chance_for_two_halves_of_one_set_and_high_against_shifted():
    a = _features(n=400, seed=3)
    halves = gm.classifier_two_sample_test(a[:200], a[200:], seed=0)
    low, high = halves["ci95"]
    assert low <= 0.5 <= high
    assert high - low < 0.25
    shifted = gm.classifier_two_sample_test(a[:200], a[200:] + 1.0, seed=0)
    assert shifted["accuracy"] > 0.9
    assert shifted["ci95"][0] > 0.5


def test_wilson_interval_known_value_and_bad_input():
    low, high = gm.wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-3)
    # At the edges the Wilson interval stays inside [0, 1]: 0/10 -> [0, 0.2775].
    assert gm.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert gm.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # A wider confidence level gives a wider interval around the same proportion.
    wide_low, wide_high = gm.wilson_interval(50, 100, confidence=0.99)
    assert wide_low < low and wide_high > high
    with pytest.raises(ValueError, match="successes"):
        gm.wilson_interval(5, 3)


def test_memorization_flags_an_exact_copy_of_a_training_image():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (50, 64))
    heldout = rng.uniform(0, 1, (50, 64))
    generated = rng.uniform(0, 1, (20, 64))
    generated[7] = train[31]  # a memorized training image
    gen_d, gen_i = gm.nearest_neighbour(generated, train)
    held_d, _ = gm.nearest_neighbour(heldout, train)
    assert gen_d[7] == pytest.approx(0.0, abs=1e-6) and gen_i[7] == 31
    report = gm.memorization(gen_d, held_d, percentile=1.0)
    assert report["count_below"] == 1
    assert report["share_below"] == pytest.approx(1 / 20)


def test_pca_plane_explained_variance_and_shape():
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(0, 10, 300), rng.normal(0, 1, 300), rng.normal(0, 0.1, 300)])
    points, share = gm.pca_plane(data)
    assert points.shape == (300, 2)
    assert share[0] > 0.95 and share[1] < 0.05 and share.sum() <= 1.0


def test_bad_inputs_fail_with_shapes_in_message():
    with pytest.raises(ValueError, match="widths differ"):
        gm.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        gm.fid(np.full((5, 3), np.nan), np.zeros((5, 3)))
