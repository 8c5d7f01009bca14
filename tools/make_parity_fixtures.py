"""Writes golden outputs of video-diffusion-pytorch 0.7.0 for the parity tests.

Optional tool, never needed by the package or its tests. Set-up (CPU torch):

  pip install torch==2.13.0 einops einops-exts rotary-embedding-torch numpy pillow tqdm
  pip install --no-deps video-diffusion-pytorch==0.7.0
  python tools/make_parity_fixtures.py

Writes tests/fixtures/parity.npz (reference weights, inputs and outputs of
several small configs, channels-first as the reference) and
tests/fixtures/reference_checkpoint.pt (a Trainer-style `model-N.pt`).
"""

from __future__ import annotations

import json
import pathlib
import sys
import types

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'fixtures'

# Each config: Unet3D kwargs, diffusion kwargs, batch size, and which checks apply.
CONFIGS = {
  'cond_linear_attn': dict(
    unet=dict(
      dim=8,
      dim_mults=(1, 2),
      channels=3,
      cond_dim=6,
      attn_heads=2,
      attn_dim_head=16,
      init_kernel_size=5,
      use_sparse_linear_attn=True,
    ),
    diffusion=dict(image_size=8, num_frames=4, channels=3, timesteps=50, loss_type='l1'),
    batch=2,
    cond_scale=2.5,
  ),
  'uncond_defaults': dict(
    unet=dict(dim=8, dim_mults=(1, 2), channels=1, use_sparse_linear_attn=False),
    diffusion=dict(
      image_size=16, num_frames=5, channels=1, timesteps=100, loss_type='l2', use_dynamic_thres=True
    ),
    batch=2,
    cond_scale=1.0,
  ),
  'cond_partial_rotary': dict(
    unet=dict(
      dim=8,
      dim_mults=(1, 2),
      channels=1,
      cond_dim=4,
      attn_heads=2,
      attn_dim_head=36,
      init_kernel_size=3,
      use_sparse_linear_attn=True,
    ),
    diffusion=dict(image_size=8, num_frames=3, channels=1, timesteps=1000, loss_type='l2'),
    batch=3,
    cond_scale=3.0,
  ),
  'long_clip_out_dim': dict(
    unet=dict(
      dim=8,
      dim_mults=(1,),
      channels=3,
      out_dim=6,
      attn_heads=2,
      attn_dim_head=8,
      use_sparse_linear_attn=True,
    ),
    diffusion=None,
    image_size=4,
    num_frames=12,
    batch=2,
  ),
}

# The model of the Trainer checkpoint fixture (model and EMA weights differ).
CHECKPOINT_CONFIG = dict(
  unet=dict(dim=4, dim_mults=(1, 2), channels=1, attn_heads=1, attn_dim_head=8),
  diffusion=dict(image_size=8, num_frames=3, channels=1, timesteps=20),
  step=1234,
)


def install_torchvision_stub():
  """video_diffusion_pytorch imports torchvision at module top; no CPU build exists."""
  tv = types.ModuleType('torchvision')
  transforms = types.ModuleType('torchvision.transforms')
  utils = types.ModuleType('torchvision.utils')

  class _Unused:
    def __init__(self, *args, **kwargs):
      pass

  for name in (
    'ToTensor',
    'ToPILImage',
    'Compose',
    'Resize',
    'RandomHorizontalFlip',
    'Lambda',
    'CenterCrop',
  ):
    setattr(transforms, name, _Unused)
  tv.transforms, tv.utils = transforms, utils
  sys.modules.update(
    {'torchvision': tv, 'torchvision.transforms': transforms, 'torchvision.utils': utils}
  )


def to_numpy(tensor):
  return tensor.detach().cpu().numpy().astype(np.float32)


def record_config(seed, name, spec, out, torch, vdp):
  torch.manual_seed(seed)
  unet = vdp.Unet3D(**spec['unet']).eval()
  out[f'{name}/spec'] = np.array(json.dumps(spec))
  for key, value in unet.state_dict().items():
    out[f'{name}/weights/{key}'] = to_numpy(value)
  diff_kw = spec['diffusion']
  frames = diff_kw['num_frames'] if diff_kw else spec['num_frames']
  size = diff_kw['image_size'] if diff_kw else spec['image_size']
  channels = spec['unet']['channels']
  batch = spec['batch']
  timesteps = diff_kw['timesteps'] if diff_kw else 1000
  x = torch.randn(batch, channels, frames, size, size)
  t = torch.randint(0, timesteps, (batch,))
  cond_dim = spec['unet'].get('cond_dim')
  cond = torch.randn(batch, cond_dim) if cond_dim else None
  focus_mixed = torch.tensor([True] + [False] * (batch - 1))
  focus_all = torch.ones(batch, dtype=torch.bool)
  out[f'{name}/x'], out[f'{name}/t'] = to_numpy(x), t.numpy().astype(np.int32)
  if cond is not None:
    out[f'{name}/cond'] = to_numpy(cond)
  with torch.no_grad():
    out[f'{name}/out'] = to_numpy(unet(x, t, cond=cond))
    out[f'{name}/out_focus_mixed'] = to_numpy(unet(x, t, cond=cond, focus_present_mask=focus_mixed))
    out[f'{name}/out_focus_all'] = to_numpy(unet(x, t, cond=cond, focus_present_mask=focus_all))
    if cond is not None:
      out[f'{name}/out_null'] = to_numpy(unet(x, t, cond=cond, null_cond_prob=1.0))
      out[f'{name}/out_guided'] = to_numpy(
        unet.forward_with_cond_scale(x, t, cond=cond, cond_scale=spec['cond_scale'])
      )
  if diff_kw is None:
    return
  diffusion = vdp.GaussianDiffusion(unet, **diff_kw).eval()
  for key, value in diffusion.state_dict().items():
    if not key.startswith('denoise_fn.'):
      out[f'{name}/buffers/{key}'] = to_numpy(value)
  x01 = torch.rand(batch, channels, frames, size, size)
  noise = torch.randn_like(x01)
  with torch.no_grad():
    loss = diffusion.p_losses(vdp.normalize_img(x01), t, cond=cond, noise=noise)
    x_t = torch.randn_like(x01)
    mean, var, log_var = diffusion.p_mean_variance(
      x_t, t, clip_denoised=True, cond=cond, cond_scale=spec['cond_scale']
    )
  out[f'{name}/loss_x01'], out[f'{name}/loss_noise'] = to_numpy(x01), to_numpy(noise)
  out[f'{name}/loss'] = np.float32(loss.item())
  out[f'{name}/p_x_t'], out[f'{name}/p_mean'] = to_numpy(x_t), to_numpy(mean)
  out[f'{name}/p_variance'], out[f'{name}/p_log_variance'] = to_numpy(var), to_numpy(log_var)


def write_reference_checkpoint(torch, vdp, path, out):
  """A Trainer `model-N.pt` (step, model, ema, scaler) and outputs of both weights."""
  torch.manual_seed(100)
  spec = CHECKPOINT_CONFIG
  model, ema = (
    vdp.GaussianDiffusion(vdp.Unet3D(**spec['unet']), **spec['diffusion']) for _ in range(2)
  )
  torch.save(
    {
      'step': spec['step'],
      'model': model.state_dict(),
      'ema': ema.state_dict(),
      'scaler': torch.amp.GradScaler('cuda', enabled=False).state_dict(),
    },
    path,
  )
  d = spec['diffusion']
  x = torch.randn(2, d['channels'], d['num_frames'], d['image_size'], d['image_size'])
  t = torch.tensor([0, d['timesteps'] - 1])
  with torch.no_grad():
    out['checkpoint/out_model'] = to_numpy(model.denoise_fn(x, t))
    out['checkpoint/out_ema'] = to_numpy(ema.denoise_fn(x, t))
  out['checkpoint/spec'] = np.array(json.dumps(spec))
  out['checkpoint/x'], out['checkpoint/t'] = to_numpy(x), t.numpy().astype(np.int32)


def main():
  install_torchvision_stub()
  import torch
  from video_diffusion_pytorch import video_diffusion_pytorch as vdp

  torch.set_num_threads(1)
  FIXTURES.mkdir(parents=True, exist_ok=True)
  out = {}
  for seed, (name, spec) in enumerate(CONFIGS.items()):
    record_config(seed, name, spec, out, torch, vdp)
  write_reference_checkpoint(torch, vdp, FIXTURES / 'reference_checkpoint.pt', out)
  np.savez_compressed(FIXTURES / 'parity.npz', **out)
  for path in (FIXTURES / 'parity.npz', FIXTURES / 'reference_checkpoint.pt'):
    print(f'{path.name}: {path.stat().st_size / 1e6:.2f} MB')


if __name__ == '__main__':
  main()
