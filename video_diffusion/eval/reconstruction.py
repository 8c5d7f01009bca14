"""How well a video autoencoder reconstructs held-out clips: PSNR, SSIM and FVD.

Videos are channels-last (n, frames, height, width, channels) in [0, 1] (or
uint8). PSNR is 10 log10(1 / MSE) of each video, averaged over videos. SSIM
(Wang et al. 2004) is computed per frame and channel with an 11x11 Gaussian
window of sigma 1.5 (smaller frames: a window of their size), K1 = 0.01,
K2 = 0.03, over the positions where the window fits, then averaged. The
reconstruction FVD is eval.fvd's I3D FVD of the reconstructions against the
originals. Held-out clips are those of eval.evaluate.held_out_clips.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from video_diffusion.diffusion.pixels import uint8_to_model_range, unnormalize_img
from video_diffusion.eval import fvd
from video_diffusion.eval.evaluate import EvalError, held_out_clips
from video_diffusion.inference.gifs import grid_frames, grid_rows
from video_diffusion.vae.loading import load_training_checkpoint

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MIN_MSE = 1e-10  # PSNR of identical videos: 100 dB, not infinity


def psnr_per_video(a, b) -> jax.Array:
  """(n,) PSNR in dB of videos in [0, 1]."""
  mse = jnp.mean(jnp.square(jnp.asarray(a, jnp.float32) - b), axis=(1, 2, 3, 4))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, MIN_MSE))


def gaussian_window(size: int, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian of `size` taps (the 2-D window is its outer product)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _blur(images: jax.Array, window: np.ndarray) -> jax.Array:
  """(n, h, w) images filtered by the separable window where it fits ('valid')."""
  k = len(window)
  x = images[..., None]
  for kernel in (window.reshape(k, 1, 1, 1), window.reshape(1, k, 1, 1)):
    x = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
  return x[..., 0]


@jax.jit
def ssim_per_video(a, b) -> jax.Array:
  """(n,) SSIM of videos in [0, 1]: the mean over frames, channels and window positions."""
  n, f, h, w, c = a.shape
  window = gaussian_window(min(SSIM_WINDOW, h, w))
  frames = lambda v: jnp.moveaxis(jnp.asarray(v, jnp.float32), -1, 2).reshape(n * f * c, h, w)
  x, y = frames(a), frames(b)
  mu_x, mu_y = _blur(x, window), _blur(y, window)
  var_x = _blur(x * x, window) - mu_x**2
  var_y = _blur(y * y, window) - mu_y**2
  cov = _blur(x * y, window) - mu_x * mu_y
  c1, c2 = SSIM_K1**2, SSIM_K2**2
  numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
  ssim = numerator / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return ssim.mean(axis=(1, 2)).reshape(n, f * c).mean(axis=1)


def reconstruct(vae, videos: np.ndarray, batch_size: int) -> np.ndarray:
  """decode(encode(videos)) (the posterior mean) of uint8 videos, `batch_size`
  at a time, as float32 in [0, 1]; the last batch is padded, so one shape compiles."""
  out = []
  for start in range(0, len(videos), batch_size):
    batch = videos[start : start + batch_size]
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
    decoded = vae.decode(vae.encode(uint8_to_model_range(jnp.asarray(batch))))
    out.append(np.asarray(unnormalize_img(decoded))[: batch_size - pad])
  return np.concatenate(out)


def reconstruction_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> dict:
  """{'psnr', 'ssim'}: their means over the videos; uint8 originals are scaled to [0, 1]."""
  originals = np.asarray(originals)
  if originals.dtype == np.uint8:
    originals = originals.astype(np.float32) / 255.0
  return {
    'psnr': float(jnp.mean(psnr_per_video(originals, reconstructions))),
    'ssim': float(jnp.mean(ssim_per_video(originals, reconstructions))),
  }


def comparison_frames(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """uint8 frames of a grid whose every cell is a clip (left) beside its reconstruction."""
  originals = np.asarray(originals)
  if originals.dtype == np.uint8:
    originals = originals.astype(np.float32) / 255.0
  pairs = np.concatenate([originals, reconstructions], axis=3)
  return grid_frames(pairs, grid_rows(len(pairs)))


class HeldOutReconstructions:
  """PSNR and SSIM of a VAE's reconstructions of `count` held-out clips of the
  config's dataset (loaded once), and the frames of their comparison grid."""

  def __init__(self, cfg, count: int, *, seed: int):
    def need(size):
      return f'vae_trainer.eval_num_videos needs {count} held-out clips: lower it'

    self.videos, _, self.description = held_out_clips(cfg, count, seed=seed, need=need)

  def __call__(self, vae) -> tuple[dict, np.ndarray]:
    reconstructions = reconstruct(vae, self.videos, len(self.videos))
    metrics = reconstruction_metrics(self.videos, reconstructions)
    return metrics, comparison_frames(self.videos, reconstructions)


def evaluate_vae_checkpoint(
  checkpoint_dir: str,
  *,
  step: int | None = None,
  ema: bool = False,
  num_videos: int,
  batch_size: int,
  seed: int = 0,
  dataset_path: str | None = None,
) -> dict:
  """PSNR, SSIM and reconstruction FVD of a train-vae checkpoint on `num_videos`
  held-out clips of its run's dataset (or `dataset_path`); the JSON-able result."""
  if num_videos < 2:
    raise EvalError(f'FVD needs at least 2 videos, got {num_videos}')
  started = time.perf_counter()
  vae, cfg, step = load_training_checkpoint(checkpoint_dir, step=step, ema=ema)

  def need(size):
    return f'lower --num-videos to {size} or less, or pass a larger dataset'

  videos, _, description = held_out_clips(
    cfg, num_videos, dataset_path=dataset_path, seed=seed, need=need
  )
  reconstructions = reconstruct(vae, videos, batch_size)
  extractor = fvd.FeatureExtractor()
  original_features = extractor(videos, label='original I3D')
  reconstruction_features = extractor(reconstructions, label='reconstruction I3D')
  return {
    **reconstruction_metrics(videos, reconstructions),
    'fvd': fvd.fvd(reconstruction_features, original_features),
    'num_videos': num_videos,
    'step': step,
    'weights': 'ema' if ema else 'raw',
    'seed': seed,
    'checkpoint_dir': os.path.abspath(checkpoint_dir),
    'real_videos': description,
    'wall_s': round(time.perf_counter() - started, 1),
  }
