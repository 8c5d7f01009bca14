"""PSNR and SSIM of reconstructions (eval.reconstruction) against direct formulas."""

import numpy as np
import pytest

from video_diffusion.eval.reconstruction import (
  comparison_frames,
  gaussian_window,
  psnr_per_video,
  reconstruction_metrics,
  ssim_per_video,
)


def direct_ssim(x: np.ndarray, y: np.ndarray, size: int = 11) -> float:
  """SSIM of two (h, w) images in [0, 1]: Wang et al.'s formula at every position
  where the Gaussian window (sigma 1.5) fits, averaged; loops, float64."""
  g = gaussian_window(size).astype(np.float64)
  window = np.outer(g, g)
  c1, c2 = 0.01**2, 0.03**2
  values = []
  for i in range(x.shape[0] - size + 1):
    for j in range(x.shape[1] - size + 1):
      a, b = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
      mu_a, mu_b = (window * a).sum(), (window * b).sum()
      var_a = (window * (a - mu_a) ** 2).sum()
      var_b = (window * (b - mu_b) ** 2).sum()
      cov = (window * (a - mu_a) * (b - mu_b)).sum()
      values.append(
        ((2 * mu_a * mu_b + c1) * (2 * cov + c2))
        / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
      )
  return float(np.mean(values))


def test_psnr():
  a = np.zeros((2, 3, 4, 4, 1), np.float32)
  b = a.copy()
  b[0] += 0.1  # MSE 0.01: 20 dB
  np.testing.assert_allclose(psnr_per_video(a, b), [20.0, 100.0], rtol=1e-5)


def test_ssim_matches_the_formula_per_frame_and_channel():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 2, 16, 14, 2)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  expected = [
    np.mean([direct_ssim(a[n, f, ..., c], b[n, f, ..., c]) for f in range(2) for c in range(2)])
    for n in range(2)
  ]
  np.testing.assert_allclose(ssim_per_video(a, b), expected, rtol=1e-4)
  np.testing.assert_allclose(ssim_per_video(a, a), [1.0, 1.0], rtol=1e-5)
  small = a[:, :, :8, :6]  # frames smaller than 11 x 11: a window of their size
  np.testing.assert_allclose(
    ssim_per_video(small[:1, :1, ..., :1], b[:1, :1, :8, :6, :1]),
    [direct_ssim(small[0, 0, ..., 0], b[0, 0, :8, :6, 0], size=6)],
    rtol=1e-4,
  )


def test_uint8_originals_and_the_comparison_grid():
  rng = np.random.default_rng(1)
  originals = rng.integers(0, 256, (3, 5, 8, 8, 1), np.uint8)
  scores = reconstruction_metrics(originals, originals / 255.0)
  assert scores['psnr'] == pytest.approx(100.0) and scores['ssim'] == pytest.approx(1.0)
  frames = comparison_frames(originals, np.zeros((3, 5, 8, 8, 1), np.float32))
  assert frames.shape == (5, 2 * 8 + 1, 2 * 16 + 1, 1)  # 2 x 2 grid of (clip | reconstruction)
  np.testing.assert_array_equal(frames[:, :8, :8], originals[0])
  assert not frames[:, :8, 8:16].any()
