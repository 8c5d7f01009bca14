"""Input-pipeline throughput: decoding clips from 720p mp4s on the fly vs packed shards.

  python benchmarks/bench_data.py [--videos 8] [--seconds 4] [--batches 8] [--train-repeats 2]
                                  [--vae PATH] [--shapes demo,seed_v2_2]

Makes `--videos` synthetic 720p mp4s (H.264, 30 fps, a keyframe every second,
moving shapes over a drifting gradient; PyAV, no download), then for the
demo's and seed_v2_2's clip shapes prints the clips/s of grain loaders:
decoding whole files (the folder source before clip sampling), decoding only
each clip's window, and reading packed ArrayRecord shards (after
`video-diffusion prepare`), with 0, 1 and 2 worker processes, next to the
clips/s of that config's train step on this machine (its batch / step time).
With --vae (a train-vae checkpoint folder of configs/vae_digits.yaml), the
latent DiT of bench_quality.py's latent_dit_flow (64 x 64, 17 grey frames) gets
rows too: its clips encoded on the fly by the autoencoder, `prepare --vae`
itself (8 clips a video, compiled before it is timed), and reading the packed
latent shards, next to its latent train step.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time

import av
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import cpu_model, markdown, median_time  # noqa: E402
from bench_quality import VARIANTS, overrides_of  # noqa: E402

import video_diffusion  # noqa: E402

SHAPES = {  # config file -> its name in the table
  'configs/config.yaml': 'demo',
  'configs/config_v2_2.yaml': 'seed_v2_2',
}
WIDTH, HEIGHT, FPS = 1280, 720, 30


def write_videos(folder: str, count: int, seconds: float) -> None:
  """`count` 720p H.264 mp4s of `seconds` each."""
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  for v in range(count):
    with av.open(os.path.join(folder, f'clip{v:03d}.mp4'), 'w') as container:
      stream = container.add_stream('libx264', rate=FPS)
      stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
      stream.options = {'g': str(FPS), 'preset': 'veryfast'}
      for i in range(int(seconds * FPS)):
        image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        image[..., 0] = (x // 5 + 3 * i + 40 * v) % 256
        image[..., 1] = (y // 3 + 2 * i) % 256
        image[..., 2] = 90
        cx, cy = (37 * v + 17 * i) % (WIDTH - 200), (23 * v + 11 * i) % (HEIGHT - 200)
        image[cy : cy + 200, cx : cx + 200] = (250, 250, 250)
        frame = av.VideoFrame.from_ndarray(image, format='rgb24')
        container.mux(stream.encode(frame))
      container.mux(stream.encode())


def clips_per_second(loader, batches: int) -> float:
  """Clips/s of a loader over `batches` batches after a first one (worker start-up)."""
  iterator = iter(loader)
  first = next(iterator)
  size = len(first['video'])
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  from video_diffusion.data import loader as data_loader

  data_loader.close_iterator(iterator)
  del first, iterator  # frees the batches' shared memory now
  gc.collect()
  return batches * size / seconds


def train_clips_per_second(cfg, repeats: int, latents: bool = False) -> tuple[float, float]:
  """(clips/s, step seconds) of the config's jitted train step at its batch size
  (`latents`: on normal floats of the config's sizes, a latent model's input)."""
  import jax
  import optax

  from video_diffusion.diffusion.factory import split_diffusion
  from video_diffusion.train import step as train_step_lib
  from video_diffusion.train.state import init_train_state

  graphdef, params, constants = split_diffusion(cfg)
  tx = optax.adam(1e-4)
  options = train_step_lib.StepOptions.from_config(cfg)
  step = jax.jit(train_step_lib.make_train_step(graphdef, constants, tx, options))
  batch = cfg.trainer.train_batch_size * cfg.trainer.gradient_accumulate_every
  rng, shape = np.random.default_rng(0), (batch, *cfg.diffusion.video_shape)
  if latents:
    videos = rng.standard_normal(shape, np.float32)
  else:
    videos = rng.integers(0, 256, shape, np.uint8)
  state = {'s': init_train_state(params, tx, seed=0)}

  def one():
    state['s'], metrics = step(state['s'], videos)
    jax.block_until_ready(metrics['loss'])

  one()  # compiles
  seconds = median_time(one, repeats)
  return batch / seconds, seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--videos', type=int, default=8)
  parser.add_argument('--seconds', type=float, default=4.0)
  parser.add_argument('--batches', type=int, default=8, help='batches timed per row')
  parser.add_argument('--frame-stride', type=int, default=2)
  parser.add_argument('--train-repeats', type=int, default=2, help='0: no train-step column')
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--vae', default=None, help='rows for the latent DiT on this autoencoder')
  parser.add_argument(
    '--shapes', default=','.join(SHAPES.values()), help="configs' rows to make ('' for none)"
  )
  args = parser.parse_args()
  os.chdir(ROOT)

  from video_diffusion.config import load_config
  from video_diffusion.data import loader as data_loader
  from video_diffusion.data.prepare import prepare
  from video_diffusion.data.sources import VideoFolderSource
  from video_diffusion.data.spec import DataSpec

  workers = [int(w) for w in args.workers.split(',')]
  work = tempfile.mkdtemp(prefix='bench-data-')
  folder = os.path.join(work, 'videos')
  os.makedirs(folder)
  start = time.perf_counter()
  write_videos(folder, args.videos, args.seconds)
  print(
    f'{args.videos} mp4s of {args.seconds:g} s at {WIDTH}x{HEIGHT}, {FPS} fps made in '
    f'{time.perf_counter() - start:.0f} s; {cpu_model()}, {os.cpu_count()} cores',
    file=sys.stderr,
  )
  rows = []
  for path, name in SHAPES.items():
    if name not in args.shapes.split(','):
      continue
    cfg = load_config(path, [f'trainer.frame_stride={args.frame_stride}'])
    spec = dataclasses.replace(DataSpec.from_config(cfg), dataset_path=folder, seed=0)
    f, s, _, c = spec.video_shape
    train = train_clips_per_second(cfg, args.train_repeats) if args.train_repeats else None
    shards = os.path.join(work, f'shards-{name}')
    start = time.perf_counter()
    manifest = prepare(folder, shards, spec, 4)
    prepared = manifest['clips'] / (time.perf_counter() - start)
    packed = dataclasses.replace(spec, dataset_path=shards)
    pipelines = [
      ('folder, whole files decoded', spec, VideoFolderSource(folder)),
      ('folder, clip windows decoded', spec, None),
      ('packed shards', packed, None),
    ]
    for label, pipeline_spec, source in pipelines:
      for count in workers:
        loader = data_loader.make_loader(
          dataclasses.replace(pipeline_spec, workers=count), source=source
        )
        whole = source is not None  # slow: fewer batches
        rate = clips_per_second(loader, max(1, args.batches // 4) if whole else args.batches)
        keeps_up = '-' if train is None else ('yes' if rate >= train[0] else 'no')
        rows.append([name, f'{f}x{s}x{s}x{c}', label, str(count), f'{rate:.1f}', keeps_up])
    rows.append([name, f'{f}x{s}x{s}x{c}', 'prepare (one process)', '0', f'{prepared:.1f}', '-'])
    if train is not None:
      rows.append(
        [name, f'{f}x{s}x{s}x{c}', f'train step ({train[1]:.2f} s)', '-', f'{train[0]:.1f}', '-']
      )
  if args.vae:
    rows += latent_rows(args, folder, work, workers)
  print(
    markdown(['config', 'clip', 'pipeline', 'workers', 'clips/s', 'keeps up with the step'], rows)
  )


def latent_rows(args, folder: str, work: str, workers: list[int]) -> list[list[str]]:
  """The latent DiT's rows: on-the-fly encoding, prepare --vae and packed latents."""
  import jax

  from video_diffusion.config import load_config
  from video_diffusion.data import loader as data_loader
  from video_diffusion.data.prepare import prepare
  from video_diffusion.data.spec import DataSpec
  from video_diffusion.vae import latent

  name = 'latent_dit_flow'
  overrides = [*overrides_of(name, args.vae), f'trainer.frame_stride={args.frame_stride}']
  cfg = load_config(os.path.join(ROOT, 'configs', VARIANTS[name][0]), overrides)
  space = latent.LatentSpace.load(args.vae)
  z = space.config.z_dim
  space = space if space.has_stats else space.with_stats(np.zeros(z), np.ones(z))  # for timing
  # 8 clips a video: prepare encodes whole batches of 8 (one compilation, made before timing)
  spec = DataSpec.from_config(cfg)
  spec = dataclasses.replace(spec, dataset_path=folder, seed=0, clips_per_video=8)
  f, s, _, c = spec.video_shape
  clip = f'{f}x{s}x{s}x{c}'
  train = None
  if args.train_repeats:
    train = train_clips_per_second(space.model_config(cfg), args.train_repeats, latents=True)
  batch = spec.batch_size
  encode = jax.jit(space.encode_videos)
  clips = np.random.default_rng(0).integers(0, 256, (batch, *spec.video_shape), np.uint8)
  key = jax.random.key(0)
  jax.block_until_ready(encode(space.params, clips, key))  # compiles
  seconds = median_time(
    lambda: jax.block_until_ready(encode(space.params, clips, key)), args.train_repeats or 2
  )
  keeps_up = '-' if train is None else ('yes' if batch / seconds >= train[0] else 'no')
  rows = [[name, clip, 'encoded on the fly (the encoder)', '-', f'{batch / seconds:.1f}', keeps_up]]
  shards = os.path.join(work, 'shards-latent')
  shard_encode, described = latent.shard_encoder(space, spec.video_shape)
  shard_encode(clips[:8], 0)  # compiles
  start = time.perf_counter()
  manifest = prepare(folder, shards, spec, 4, encode=shard_encode, latents=described)
  prepared = manifest['clips'] / (time.perf_counter() - start)
  for count in workers:
    packed = dataclasses.replace(spec, dataset_path=shards, workers=count)
    rate = clips_per_second(data_loader.make_loader(packed), args.batches)
    keeps_up = '-' if train is None else ('yes' if rate >= train[0] else 'no')
    rows.append([name, clip, 'packed latent shards', str(count), f'{rate:.1f}', keeps_up])
  rows.append([name, clip, 'prepare --vae (one process)', '0', f'{prepared:.1f}', '-'])
  if train is not None:
    rows.append([name, clip, f'latent train step ({train[1]:.2f} s)', '-', f'{train[0]:.1f}', '-'])
  return rows


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
