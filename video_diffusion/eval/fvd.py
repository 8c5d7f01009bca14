"""Frechet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D.

Videos are channels-last (n, frames, h, w, c), uint8 in [0, 255] or float
in [0, 1]. For I3D each frame is resized bilinearly to 224x224, grey is
repeated to 3 channels and values are mapped to [-1, 1]; videos shorter than
i3d.MIN_FRAMES frames repeat each frame until they are long enough (I3D's
temporal pooling needs 9). The features are I3D's 400 time-averaged logits;
FVD is the Frechet distance between Gaussian fits of two feature sets,
computed in float64 with a symmetric (eigendecomposition) matrix square root.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.eval import i3d
from video_diffusion.reporting.progress import ProgressBar


def i3d_input(videos: jax.Array) -> jax.Array:
  """(b, f, h, w, c) float in [0, 1] -> (b, f', 224, 224, 3) in [-1, 1], f' >= MIN_FRAMES."""
  b, f, h, w, c = videos.shape
  if c not in (1, 3):
    raise ValueError(f'videos must have 1 or 3 channels, got shape {videos.shape}')
  repeat = math.ceil(i3d.MIN_FRAMES / f)
  if repeat > 1:
    videos = jnp.repeat(videos, repeat, axis=1)
  size = i3d.INPUT_SIZE
  videos = jax.image.resize(
    videos, (b, videos.shape[1], size, size, c), 'bilinear', antialias=False
  )
  if c == 1:
    videos = jnp.repeat(videos, 3, axis=-1)
  return videos * 2.0 - 1.0


class FeatureExtractor:
  """I3D logits of videos, `batch_size` at a time through one compiled function.

  `extractor(videos)` -> float64 (n, 400). The last batch is padded (and the
  padding dropped), so every batch has one shape and compiles once; fewer
  videos than batch_size go as one batch of their number.
  """

  def __init__(self, batch_size: int = 8, model: i3d.InceptionI3d | None = None):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    graphdef, state = nnx.split(model or i3d.load_i3d())
    self.batch_size, self._state = batch_size, state
    self._features = jax.jit(lambda state, videos: nnx.merge(graphdef, state)(i3d_input(videos)))

  def __call__(self, videos: np.ndarray, *, label: str = '', stream=None) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5:
      raise ValueError(
        f'videos must be (n, frames, height, width, channels), got shape {videos.shape}'
      )
    scale = 1.0 / 255.0 if videos.dtype == np.uint8 else 1.0
    n, out = len(videos), []
    size = max(1, min(self.batch_size, n))  # fewer videos than a batch: one smaller batch
    with ProgressBar(n, stream=stream, unit='video', label=label or 'I3D features') as bar:
      for start in range(0, n, size):
        batch = videos[start : start + size]
        pad = size - len(batch)
        if pad:
          batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        logits = self._features(self._state, np.asarray(batch, np.float32) * scale)
        out.append(np.asarray(logits, np.float64)[: len(batch) - pad])
        bar.update(min(start + size, n))
    return np.concatenate(out) if out else np.zeros((0, i3d.NUM_CLASSES))


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) in float64 of (n, d) features; n >= 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'need (n >= 2, d) features to fit a Gaussian, got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The square root of a symmetric positive semi-definite matrix (negative
  eigenvalues from rounding are clipped to 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians, in float64.

  tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2): the sum of the square roots
  of the eigenvalues of a symmetric PSD matrix, which stays stable for the
  singular covariances of fewer samples than dimensions.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fvd(features1: np.ndarray, features2: np.ndarray) -> float:
  """FVD between two (n, 400) I3D feature sets."""
  return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))
