"""Times the PyTorch reference, video-diffusion-pytorch 0.7.0, on bench_model's CONFIGS.

Optional; never needed by the package. Set-up (CPU torch; an unpinned torch
pulls a multi-GB CUDA build):

  pip install torch==2.13.0 einops einops-exts rotary-embedding-torch tqdm
  pip install --no-deps video-diffusion-pytorch==0.7.0

  python benchmarks/reference.py --one tiny --measure train [--repeats 5]
  python benchmarks/reference.py --one tiny --measure denoise [--batch 4]
  python benchmarks/reference.py --one tiny --measure DDPM-1000 [--batch 4]
                                 [--ddpm-steps-measured 10]

Prints one JSON line. train: loss.backward() + torch.optim.Adam step on
GaussianDiffusion(Unet3D) with bench_model's shapes (timesteps 1000, l2 loss),
median of --repeats after bench_model.WARMUPS. denoise: one Unet3D call on --batch
videos, likewise. DDPM-1000: the reference's only
sampler, ancestral over all 1000 timesteps, one Python-dispatched denoiser
call per step; its p_sample_loop is timed over its first --ddpm-steps-measured
steps (after one warm-up step) and scaled to 1000. bench.py runs this module
in a subprocess; importing it does not import torch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bench_model import CONFIGS, median_time, peak_rss_gb  # noqa: E402

from video_diffusion.runtime.allocator import active_allocator  # noqa: E402  (no jax)

PINNED = {'torch': '2.13.0', 'video-diffusion-pytorch': '0.7.0'}
MODULES = (
  'torch',
  'video_diffusion_pytorch',
  'einops',
  'einops_exts',
  'rotary_embedding_torch',
  'tqdm',
)
INSTALL = (
  'pip install torch==2.13.0 einops einops-exts rotary-embedding-torch tqdm && '
  'pip install --no-deps video-diffusion-pytorch==0.7.0'
)
MEASURES = ('train', 'denoise', 'DDPM-1000')
TIMESTEPS = 1000


def installed_versions() -> dict[str, str] | None:
  """{distribution: version} of the pinned packages, or None when the reference
  cannot be imported (found without importing torch)."""
  if any(importlib.util.find_spec(m) is None for m in MODULES):
    return None
  try:
    return {name: importlib.metadata.version(name) for name in PINNED}
  except importlib.metadata.PackageNotFoundError:
    return None


def build_reference(name: str):
  """(torch, GaussianDiffusion(Unet3D)) of config `name`, on all CPU threads."""
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  from make_parity_fixtures import install_torchvision_stub

  install_torchvision_stub()
  os.environ.setdefault('TQDM_DISABLE', '1')  # no progress bar in p_sample_loop
  import torch
  from video_diffusion_pytorch import GaussianDiffusion, Unet3D

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  c = CONFIGS[name]
  unet = Unet3D(dim=c['dim'], dim_mults=c['dim_mults'], channels=c['channels'])
  return torch, GaussianDiffusion(
    unet,
    image_size=c['image_size'],
    num_frames=c['num_frames'],
    channels=c['channels'],
    timesteps=TIMESTEPS,
    loss_type='l2',
  )


def time_train_step(name: str, repeats: int) -> dict:
  """Median seconds of one reference train step (forward, backward, Adam)."""
  torch, diffusion = build_reference(name)
  c = CONFIGS[name]
  optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
  videos = torch.rand(c['batch'], c['channels'], c['num_frames'], c['image_size'], c['image_size'])
  losses = []

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss = diffusion(videos)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

  params_m = sum(p.numel() for p in diffusion.parameters()) / 1e6
  return dict(params_m=params_m, time_s=median_time(train_step, repeats), loss=losses[-1])


def time_denoise(name: str, batch: int, repeats: int) -> dict:
  """Median seconds of one denoiser call (the Unet3D at `batch` videos, no grad)."""
  torch, diffusion = build_reference(name)
  c = CONFIGS[name]
  x = torch.randn(batch, c['channels'], c['num_frames'], c['image_size'], c['image_size'])
  t = torch.randint(0, TIMESTEPS, (batch,))

  def call():
    with torch.inference_mode():
      diffusion.denoise_fn(x, t)

  return dict(time_s=median_time(call, repeats), batch=batch)


def time_ddpm(name: str, batch: int, steps_measured: int) -> dict:
  """The reference's p_sample_loop over its first `steps_measured` steps, scaled to 1000."""
  torch, diffusion = build_reference(name)
  calls = min(steps_measured, TIMESTEPS)
  c = CONFIGS[name]
  shape = (batch, c['channels'], c['num_frames'], c['image_size'], c['image_size'])
  with torch.inference_mode():  # warm-up: one denoiser step
    diffusion.p_sample(torch.randn(shape), torch.full((batch,), TIMESTEPS - 1))
  # p_sample_loop walks range(num_timesteps): the same work per step at any t.
  diffusion.num_timesteps = calls
  t0 = time.perf_counter()
  videos = diffusion.sample(batch_size=batch)
  run_s = time.perf_counter() - t0
  assert videos.shape == shape
  return dict(
    sampler='DDPM-1000',
    steps=TIMESTEPS,
    measured_calls=calls,
    per_call_s=run_s / calls,
    total_s=run_s / calls * TIMESTEPS,
  )


def measure(name: str, what: str, repeats: int, batch: int, steps_measured: int) -> dict:
  """One JSON row: the figures of `what` (a MEASURES entry) for config `name`."""
  if what == 'train':
    row = time_train_step(name, repeats)
  elif what == 'denoise':
    row = time_denoise(name, batch, repeats)
  else:
    row = time_ddpm(name, batch, steps_measured)
  import torch

  return dict(
    row,
    side='reference',
    config=name,
    what=what,
    malloc=active_allocator(),
    rss_gb=peak_rss_gb(),
    torch_version=torch.__version__,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--one', choices=sorted(CONFIGS), required=True)
  parser.add_argument('--measure', choices=MEASURES, default='train')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--batch', type=int, default=4, help='videos per sampling call')
  parser.add_argument('--ddpm-steps-measured', type=int, default=10)
  args = parser.parse_args()
  print(
    json.dumps(measure(args.one, args.measure, args.repeats, args.batch, args.ddpm_steps_measured)),
    flush=True,
  )


if __name__ == '__main__':
  main()
