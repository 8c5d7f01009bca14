"""Diffusion on a video autoencoder's latents: the frozen autoencoder of
`diffusion.vae`, the latents' per-channel normalisation and the sizes the
backbone sees.

A latent model's "videos" are the autoencoder's normalised latents,
(latents - mean) / std, channels-last: the train step, the validation loss and
the samplers take them where a pixel model takes videos in [-1, 1].
`encode_videos` and `decode_videos` are the two edges; both are pure (jit them
with the autoencoder's params as an argument).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.config import Config
from video_diffusion.config.vae import ENCODER_CHUNK, LATENTS_RECORD, VAEConfig, num_frames_problem
from video_diffusion.diffusion.pixels import normalize_img, uint8_to_model_range, unnormalize_img
from video_diffusion.parallel import sharding
from video_diffusion.vae.loading import load_vae
from video_diffusion.vae.wan import Posterior

STATS_EPSILON = 1e-6  # the smallest standard deviation a measured channel is given
STATS_CLIPS = 64  # training clips whose latents give the statistics an autoencoder lacks
ENCODE_STREAM = 0x6C6174  # folded into the run's seed for the posterior samples of the clips


def fingerprint(state) -> str:
  """A short hash of an nnx.State's arrays (paths, shapes, dtypes and values)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(state), key=lambda p: str(p[0])):
    array = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}{array.shape}{array.dtype}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def latent_sizes_problem(cfg: Config, vae: VAEConfig) -> str | None:
  """What the config's pixel sizes (or settings) get wrong for the autoencoder,
  with the fix, or None."""
  d = cfg.diffusion
  compression = vae.spatial_compression
  if d.channels != vae.in_channels or d.channels != vae.out_channels:
    return (
      f'diffusion.channels is {d.channels}, the autoencoder {d.vae} encodes '
      f'{vae.in_channels} and decodes {vae.out_channels} channels; set diffusion.channels '
      f'and unet.channels to {vae.in_channels}'
    )
  if d.image_size % compression:
    fit = max(compression, round(d.image_size / compression) * compression)
    return (
      f"diffusion.image_size {d.image_size} is not a multiple of the autoencoder's "
      f'{compression}x spatial compression; set it to {fit}, say'
    )
  if problem := num_frames_problem(vae, d.num_frames):
    return problem
  return None


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSpace:
  """The frozen autoencoder (graphdef, params) and the latents' normalisation.

  `mean` and `std` are per channel (z_dim,): the autoencoder's latents_mean /
  latents_std, or measured on the training data (`with_stats`).
  `sample_posterior`: the train step encodes to a posterior sample (else its mean).
  `stored`: what the training shards hold ('moments' or 'sample' of `prepare
  --vae`), or None for videos, encoded on the fly.
  """

  graphdef: nnx.GraphDef
  params: Any
  config: VAEConfig
  path: str
  fingerprint: str
  mean: np.ndarray | None
  std: np.ndarray | None
  sample_posterior: bool = True
  stored: str | None = None

  @classmethod
  def load(cls, path: str, *, sample_posterior: bool = True) -> LatentSpace:
    """The autoencoder of `path` (as load_vae takes it: a diffusers folder or a
    train-vae checkpoint folder, its newest weights) with its own statistics, if any."""
    vae = load_vae(path)
    graphdef, params = nnx.split(vae)
    return cls(
      graphdef=graphdef,
      params=params,
      config=vae.config,
      path=str(path),
      fingerprint=fingerprint(params),
      mean=vae.latents_mean,
      std=vae.latents_std,
      sample_posterior=sample_posterior,
    )

  @property
  def has_stats(self) -> bool:
    return self.mean is not None and self.std is not None

  def with_stats(self, mean, std) -> LatentSpace:
    """This space with per-channel statistics `mean` and `std` (z_dim,)."""
    mean = np.asarray(mean, np.float32).reshape(self.config.z_dim)
    std = np.maximum(np.asarray(std, np.float32).reshape(self.config.z_dim), STATS_EPSILON)
    return dataclasses.replace(self, mean=mean, std=std)

  def record(self) -> dict:
    """What a checkpoint keeps of the autoencoder: path, fingerprint and statistics."""
    return {
      'vae': self.path,
      'fingerprint': self.fingerprint,
      'mean': [float(x) for x in self.mean],
      'std': [float(x) for x in self.std],
    }

  def mismatch(self, record: dict | None) -> str | None:
    """Why a checkpoint's record (`record()`) is of another autoencoder, or None."""
    if record is None:
      return 'the checkpoint holds a pixel-space model, diffusion.vae asks for latents'
    if record.get('fingerprint') != self.fingerprint:
      return (
        f'the checkpoint was trained on the latents of the autoencoder {record.get("vae")!r} '
        f'(weights {record.get("fingerprint")}), diffusion.vae {self.path!r} holds other weights '
        f'({self.fingerprint})'
      )
    return None

  def model_config(self, cfg: Config) -> Config:
    """`cfg` with the latents' sizes where the backbone reads sizes: diffusion's
    image_size, num_frames and channels, and unet.channels (unet.out_dim null)."""
    d, v = cfg.diffusion, self.config
    diffusion = dataclasses.replace(
      d,
      image_size=d.image_size // v.spatial_compression,
      num_frames=v.latent_frames(d.num_frames),
      channels=v.z_dim,
    )
    unet = dataclasses.replace(cfg.unet, channels=v.z_dim, out_dim=None)
    return dataclasses.replace(cfg, diffusion=diffusion, unet=unet)

  def _vae(self, params):
    return nnx.merge(self.graphdef, params)

  def posterior(self, params, videos) -> Posterior:
    """The autoencoder's posterior of uint8 (or [-1, 1] float) videos (b, f, h, w, c)."""
    if videos.dtype == jnp.uint8:
      videos = uint8_to_model_range(videos)
    return self._vae(params).posterior(videos)

  def encode_videos(self, params, videos, key=None) -> jax.Array:
    """uint8 (or [-1, 1] float) videos (b, f, h, w, c) -> normalised latents
    (b, t, h', w', z): a posterior sample drawn from `key`, or its mean without one."""
    posterior = self.posterior(params, videos)
    latents = posterior.mean if key is None else posterior.sample(key)
    return (latents - self.mean) / self.std

  def encode_images(self, params, stacks, key=None) -> jax.Array:
    """Image stacks (b, f, h, w, c) -> normalised latents (b, t, h', w', z) of their
    first t frames (t: the latent frames of f), each encoded alone as a one-frame
    video, so that the latent frames stay as independent as the images."""
    b, f = stacks.shape[:2]
    t = self.config.latent_frames(f)
    latents = self.encode_videos(params, stacks[:, :t].reshape(b * t, 1, *stacks.shape[2:]), key)
    return latents.reshape(b, t, *latents.shape[2:])

  def encode_batch(self, params, videos, images=None, key=None) -> jax.Array:
    """encode_videos of a batch whose items flagged in `images` (bool (b,), or
    None) are co-training image stacks, encoded by encode_images."""
    latents = self.encode_videos(params, videos, key)
    if images is None:
      return latents
    stacks = self.encode_images(params, videos, key)
    return jnp.where(images[:, None, None, None, None], stacks, latents)

  def stored_latents(self, arrays, key=None) -> jax.Array:
    """Normalised latents of what shards of `self.stored` hold: 'moments' (mean and
    log-variance on the channels) sampled with `key` (their mean without one), or a
    'sample' as it is."""
    latents = arrays
    if self.stored == 'moments':
      posterior = Posterior(*jnp.split(arrays, 2, axis=-1))
      latents = posterior.mean if key is None else posterior.sample(key)
    return (latents - self.mean) / self.std

  def with_shards(self, latents: dict | None) -> LatentSpace:
    """This space training on shards whose manifest's 'latents' is `latents` (None:
    videos); raises ValueError, with the fix, for shards it cannot use."""
    if latents is None:
      return self
    if latents.get('fingerprint') != self.fingerprint:
      raise ValueError(
        f'trainer.dataset_path holds the latents of the autoencoder {latents.get("vae")!r} '
        f'(weights {latents.get("fingerprint")}), diffusion.vae {self.path!r} holds other '
        f'weights ({self.fingerprint}); set diffusion.vae to it, or prepare the shards again '
        'with --vae of this one'
      )
    if latents['stored'] == 'sample' and not self.sample_posterior:
      raise ValueError(
        'trainer.dataset_path holds posterior samples, diffusion.vae_posterior: mean asks for '
        'the means; set vae_posterior: sample, or prepare the shards again without --vae-sample'
      )
    return dataclasses.replace(self, stored=latents['stored'])

  def sampling_request(self, *, first=None, last=None, num_frames=None, num_cond_frames=None):
    """inference.sampling.generate's first / last / num_frames / num_cond_frames in
    latent frames, from pixel ones (k, h, w, c) in [0, 1]. `first` is cut to its
    last 1 + 4j frames and encoded (the causal encoder gives the latents those
    frames have at a video's start); `last` (interpolation) to its last 4i frames,
    encoded after `first` as if they followed it. Frame counts must be 1 + 4j.
    Raises ValueError on frames a latent model cannot take."""
    request = {
      key: None if frames is None else self.config.latent_frames(frames)
      for key, frames in (('num_frames', num_frames), ('num_cond_frames', num_cond_frames))
    }
    if first is None:
      return request
    given = np.asarray(first, np.float32)
    given = given[len(given) - (1 + (len(given) - 1) // ENCODER_CHUNK * ENCODER_CHUNK) :]
    kept = self.config.latent_frames(len(given))  # the latent frames of `first`
    if last is not None:
      ending = np.asarray(last, np.float32)
      if len(ending) < ENCODER_CHUNK:
        raise ValueError(
          f'a latent model interpolates to whole chunks of {ENCODER_CHUNK} last frames; '
          f'--interpolate gave {len(ending)}: give at least {ENCODER_CHUNK}'
        )
      ending = ending[len(ending) % ENCODER_CHUNK :]
      given = np.concatenate([given, ending])
    encode = jax.jit(self.encode_videos)
    latents = np.asarray(unnormalize_img(encode(self.params, normalize_img(given[None]))))[0]
    request['first'] = latents[:kept]
    if last is not None:
      request['last'] = latents[kept:]
    return request

  def decode_videos(self, params, samples) -> jax.Array:
    """A sampler's output (normalised latents mapped to [0, 1] as pixels are,
    x / 2 + 1 / 2) -> videos (b, f, h, w, c) in [0, 1]."""
    latents = normalize_img(samples) * self.std + self.mean
    return unnormalize_img(self._vae(params).decode(latents))


def measure_stats(
  space: LatentSpace, videos: np.ndarray, batch_size: int, seed: int = 0
) -> LatentSpace:
  """`space` with the per-channel mean and standard deviation of the latents of
  uint8 `videos` (n, f, h, w, c), or of the stored arrays of `space.stored`
  shards, that training diffuses: posterior samples (drawn from `seed`) or,
  without sample_posterior, the means; `batch_size` at a time."""
  raw = dataclasses.replace(
    space,
    mean=np.zeros(space.config.z_dim, np.float32),
    std=np.ones(space.config.z_dim, np.float32),
  )
  if space.stored is None:
    encode = jax.jit(raw.encode_videos)
  else:
    encode = jax.jit(lambda params, arrays, key: raw.stored_latents(arrays, key))
  total, total_sq, count = 0.0, 0.0, 0
  key = jax.random.fold_in(jax.random.key(seed), ENCODE_STREAM) if space.sample_posterior else None
  for start in range(0, len(videos), batch_size):
    batch_key = None if key is None else jax.random.fold_in(key, start)
    batch = jnp.asarray(videos[start : start + batch_size])
    latents = np.asarray(encode(space.params, batch, batch_key))
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    total, total_sq, count = total + flat.sum(0), total_sq + (flat**2).sum(0), count + len(flat)
  mean = total / count
  return space.with_stats(mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)))


def shard_encoder(space: LatentSpace, video_shape, *, sample: bool = False, seed: int = 0):
  """(encode, latents) for data.prepare.prepare: `encode(clips, start)` maps uint8
  clips (n, f, h, w, c) to float32 posterior moments (mean and log-variance on the
  channels) or, with `sample`, to posterior samples drawn from `seed` and the
  first clip's index `start`; `latents` describes them for the manifest."""
  key = jax.random.fold_in(jax.random.key(seed), ENCODE_STREAM)

  @jax.jit
  def encode_batch(params, videos, start):
    posterior = space.posterior(params, videos)
    if sample:
      return posterior.sample(jax.random.fold_in(key, start))
    return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

  def encode(clips: np.ndarray, start: int) -> np.ndarray:
    return np.asarray(encode_batch(space.params, jnp.asarray(clips), start), np.float32)

  frames, size, _, _ = video_shape
  v = space.config
  latents = {
    'vae': space.path,
    'fingerprint': space.fingerprint,
    'stored': 'sample' if sample else 'moments',
    'shape': [
      v.latent_frames(frames),
      size // v.spatial_compression,
      size // v.spatial_compression,
      v.z_dim if sample else 2 * v.z_dim,
    ],
  }
  return encode, latents


def for_checkpoint(cfg: Config, saved: dict) -> LatentSpace | None:
  """The latent space of a checkpoint whose config dict is `saved`: the
  autoencoder of cfg's diffusion.vae, checked against the checkpoint's record,
  with the record's statistics; None for a pixel-space model. Raises ValueError
  (with the fix) when the two disagree."""
  record = saved.get(LATENTS_RECORD)
  path = cfg.diffusion.vae
  if path is None:
    if record is not None:
      raise ValueError(
        f'the checkpoint diffuses the latents of the autoencoder {record.get("vae")!r}; '
        'set diffusion.vae to it'
      )
    return None
  space = LatentSpace.load(path)
  problem = space.mismatch(record)
  if problem:
    raise ValueError(f'{problem}; set diffusion.vae to the autoencoder the model was trained on')
  return space.with_stats(record['mean'], record['std'])


def decoder(space: LatentSpace | None):
  """`decode(samples) -> numpy videos in [0, 1]` of a sampler's output (jitted;
  frames larger than the autoencoder's tiles, 256 pixels, decode tile by tile, as
  diffusers' enable_tiling); for a pixel-space model (space None) the samples as
  they are."""
  if space is None:
    return np.asarray
  vae = nnx.merge(space.graphdef, space.params)
  vae.enable_tiling()
  tiled = dataclasses.replace(space, graphdef=nnx.graphdef(vae))
  decode = jax.jit(tiled.decode_videos)
  return lambda samples: np.asarray(decode(space.params, jnp.asarray(samples)))


class LatentEncoder:
  """A latent run's train-step input: uint8 video batches (or latent shards'
  arrays, without the encoder) sharded over `mesh`'s batch axes -> normalised
  latents sharded alike; a posterior sample drawn from the run's seed and the
  step (so a resumed run draws the same), or the mean. The autoencoder's params
  are replicated on the mesh."""

  def __init__(self, space: LatentSpace, mesh, seed: int):
    self.space = space
    self.replicated, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self.params = jax.device_put(space.params, self.replicated)
    self.key = jax.random.fold_in(jax.random.key(seed), ENCODE_STREAM)

    def wrap(key_data):
      return None if key_data is None else jax.random.wrap_key_data(key_data)

    self._encode = jax.jit(
      lambda params, videos, images, key_data: space.encode_batch(
        params, videos, images, wrap(key_data)
      ),
      out_shardings=batch,
    )
    self._stored = jax.jit(
      lambda arrays, key_data: space.stored_latents(arrays, wrap(key_data)), out_shardings=batch
    )

  def means(self, videos: jax.Array) -> jax.Array:
    """The posterior means of a batch (for held-out clips)."""
    return self._encode(self.params, videos, None, None)

  def __call__(self, batch: jax.Array, step: int, images: jax.Array | None = None) -> jax.Array:
    """The train step's latents of the batch of step `step`: uint8 videos encoded
    (`images` flags co-training image stacks), or the stored arrays of latent shards."""
    key_data = self._key_data(step) if self.space.sample_posterior else None
    if self.space.stored is not None:
      return self._stored(batch, key_data)
    return self._encode(self.params, batch, images, key_data)

  def _key_data(self, step: int) -> jax.Array:
    key_data = jax.random.key_data(jax.random.fold_in(self.key, step))
    return sharding.global_array(np.asarray(key_data), self.replicated)
