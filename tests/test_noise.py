"""The DDPM forward process: schedule, determinism, and what the noised image's statistics must be."""

import math

import numpy as np
import pytest

from mmloop.teachers.noise import ddpm_alpha_bar, noised_image


def alpha_bar_by_hand(t, steps=1000, beta_start=1e-4, beta_end=0.02):
    """prod_{s=1..t} (1 - beta_s), beta_s linear from beta_start (s = 1) to beta_end (s = steps)."""
    product = 1.0
    for s in range(1, t + 1):
        beta = beta_start + (beta_end - beta_start) * (s - 1) / (steps - 1)
        product *= 1.0 - beta
    return product


def test_alpha_bar_matches_the_closed_form_and_decreases():
    for t in (0, 1, 2, 10, 250, 600, 999, 1000):
        assert ddpm_alpha_bar(t) == pytest.approx(alpha_bar_by_hand(t), rel=1e-9)
    assert ddpm_alpha_bar(0) == 1.0
    assert ddpm_alpha_bar(1) == pytest.approx(1 - 1e-4)
    values = [ddpm_alpha_bar(t) for t in range(0, 1001, 50)]
    assert all(later < earlier for earlier, later in zip(values, values[1:]))
    assert ddpm_alpha_bar(5, steps=10, beta_start=0.1, beta_end=0.2) == pytest.approx(
        alpha_bar_by_hand(5, 10, 0.1, 0.2))


def test_step_zero_returns_the_image():
    image = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = noised_image(image, 0, seed=5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def clipped_moments(mu, sigma):
    """E[Y], E[Y^2] for Y = clip(X, -1, 1), X ~ N(mu, sigma^2)."""
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    lo, hi = (-1 - mu) / sigma, (1 - mu) / sigma
    inside = cdf(hi) - cdf(lo)
    below, above = cdf(lo), 1 - cdf(hi)
    mean = -below + above + mu * inside + sigma * (pdf(lo) - pdf(hi))
    square = (below + above + mu * mu * inside + 2 * mu * sigma * (pdf(lo) - pdf(hi))
              + sigma * sigma * (inside + lo * pdf(lo) - hi * pdf(hi)))
    return mean, square


def test_at_step_600_the_correlation_with_the_original_is_about_sqrt_alpha_bar():
    # A black-and-white image is x_0 = +-1 after scaling: unit variance, so without clipping
    # corr(x_t, x_0) = sqrt(alpha_bar). With the clipping back to pixels it is the exact value below.
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 2, (512, 512, 1), dtype=np.uint8) * 255).repeat(3, axis=2)
    out = noised_image(image, 600, seed=123)
    corr = np.corrcoef(image.ravel().astype(float), out.ravel().astype(float))[0, 1]

    a = math.sqrt(alpha_bar_by_hand(600))
    sigma = math.sqrt(1 - a * a)
    (m_plus, s_plus), (m_minus, s_minus) = clipped_moments(a, sigma), clipped_moments(-a, sigma)
    expected = ((m_plus - m_minus) / 2) / math.sqrt((s_plus + s_minus) / 2 - ((m_plus + m_minus) / 2) ** 2)
    assert corr == pytest.approx(expected, abs=0.005)
    assert corr == pytest.approx(a, rel=0.06)
    # Far less signal than at a small step, far more than at the end.
    assert np.corrcoef(image.ravel(), noised_image(image, 50, seed=123).ravel())[0, 1] > 0.5
    assert abs(np.corrcoef(image.ravel(), noised_image(image, 1000, seed=123).ravel())[0, 1]) < 0.02


def test_the_seed_decides_the_noise():
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    first = noised_image(image, 600, seed=7)
    assert np.array_equal(first, noised_image(image, 600, seed=7))
    assert np.array_equal(first, noised_image(image.copy(), 600, seed=np.int64(7)))
    other = noised_image(image, 600, seed=8)
    assert (first != other).mean() > 0.5


def test_the_input_is_left_untouched():
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    noised_image(image, 600, seed=0)
    assert (image == 100).all()


@pytest.mark.parametrize("t", [-1, 1001, 2.5, "600", None, True])
def test_a_step_out_of_range_is_refused(t):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="t must be"):
        noised_image(image, t, seed=0)
    with pytest.raises(ValueError, match="t must be"):
        ddpm_alpha_bar(t)


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4, 3), dtype=np.float32), "must be uint8"),
    (np.zeros((4, 4), dtype=np.uint8), "H x W x 3"),
    (np.zeros((4, 4, 4), dtype=np.uint8), "H x W x 3"),
    (np.zeros((0, 4, 3), dtype=np.uint8), "H x W x 3"),
    ([[[0, 0, 0]]], "numpy array"),
])
def test_a_bad_image_is_refused(image, message):
    with pytest.raises(ValueError, match=message):
        noised_image(image, 600, seed=0)


def test_a_bad_seed_or_schedule_is_refused():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="seed"):
        noised_image(image, 600, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        noised_image(image, 600, seed=None)
    with pytest.raises(ValueError, match="beta_start"):
        ddpm_alpha_bar(10, beta_start=0.03, beta_end=0.02)
    with pytest.raises(ValueError, match="steps"):
        ddpm_alpha_bar(0, steps=0)
