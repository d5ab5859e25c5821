"""The DDPM forward (noising) process on images (Ho et al. 2020), in plain numpy.

With the linear schedule beta_1..beta_T from `beta_start` to `beta_end` (T = `steps`),

    alpha_bar_t = prod_{s=1..t} (1 - beta_s)           (alpha_bar_0 = 1: no noise)
    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

with x_0 the image scaled to [-1, 1]. `noised_image` draws eps from its own seeded generator
and maps x_t back to uint8 RGB by clipping to [-1, 1] and rounding, so the same image, step
and seed always give the same bytes. SENA (arXiv 2412.15650) answers a question on such an
image to get the rejected reply of a preference pair.
"""

from __future__ import annotations

from typing import Any

DEFAULT_STEPS = 1000
DEFAULT_BETA_START = 1e-4
DEFAULT_BETA_END = 0.02


def _check_schedule(t: Any, steps: int, beta_start: float, beta_end: float) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"noise: steps must be a positive integer, got {steps!r}")
    if not 0.0 < float(beta_start) <= float(beta_end) < 1.0:
        raise ValueError(f"noise: need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, "
                         f"beta_end={beta_end!r}")
    if isinstance(t, bool) or not hasattr(t, "__index__"):
        raise ValueError(f"noise: t must be an integer step in 0..{steps}, got {t!r}")
    t = int(t.__index__())
    if not 0 <= t <= steps:
        raise ValueError(f"noise: t must be in 0..{steps} (0 = no noise), got {t}")
    return t


def ddpm_alpha_bar(t: int, steps: int = DEFAULT_STEPS, beta_start: float = DEFAULT_BETA_START,
                   beta_end: float = DEFAULT_BETA_END) -> float:
    """alpha_bar_t of the linear beta schedule: the share of the image's signal power left at step t."""
    import numpy as np

    t = _check_schedule(t, steps, beta_start, beta_end)
    betas = np.linspace(float(beta_start), float(beta_end), steps, dtype=np.float64)
    return float(np.prod(1.0 - betas[:t]))


def noised_image(array: Any, t: int, *, seed: int, steps: int = DEFAULT_STEPS,
                 beta_start: float = DEFAULT_BETA_START, beta_end: float = DEFAULT_BETA_END):
    """The uint8 H x W x 3 image after the forward process to step `t`, eps drawn from
    numpy's default generator seeded with `seed` (a non-negative integer)."""
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise ValueError(f"noise: the image must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"noise: the image must be uint8, got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"noise: the image must be a non-empty H x W x 3 RGB array, got shape {array.shape}")
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or int(seed.__index__()) < 0:
        raise ValueError(f"noise: seed must be a non-negative integer, got {seed!r}")
    alpha_bar = ddpm_alpha_bar(t, steps, beta_start, beta_end)
    x0 = array.astype(np.float64) / 127.5 - 1.0
    eps = np.random.default_rng(int(seed.__index__())).standard_normal(x0.shape)
    xt = np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * eps
    return np.rint((np.clip(xt, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
