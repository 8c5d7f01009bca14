"""GPU checks of the attention and bf16 train step (run on an NVIDIA GPU).

  python benchmarks/bench_gpu.py [--smoke] [--output DIR] [--budget-s 420] [--variants A,B]

1. Peak: a jitted 8192^3 bfloat16 matmul, the practical dense bf16 rate.
2. Attention: jax.nn.dot_product_attention with implementation 'cudnn' and
   'xla' in bfloat16 on the DiT-B attention shapes at the seed v2_3 size
   (spatial, temporal with and without the focus mask, full), each output and
   gradient against float32 XLA on the same inputs (relative L2 error), and
   the forward+backward time of each.
3. Train step (the project's make_train_step, trainer.compute_dtype bfloat16,
   batch 4 x 2 accumulated as config_v2_3.yaml) of the Unet3D of
   config_v2_3.yaml and of a DiT of the same parameter count (DiT-B: width
   768, depth 12, 12 heads, patch 2), flow objective, with its attention by
   cuDNN (what `attend` picks on a GPU) and forced to XLA: step time, FLOPs
   (XLA's cost analysis of the step, counted by the CPU backend in a child
   process, since a GPU's counts no cuDNN call or convolution), MFU against
   the peak of 1, the attention the compiled step contains, its memory.

Writes results.json under --output after each stage and prints Markdown tables.
--smoke runs tiny shapes (any backend) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_model import fmt, markdown, median_time, model_flops  # noqa: E402

import video_diffusion  # noqa: E402

DIT_B = ['dit.width=768', 'dit.depth=12', 'dit.heads=12', 'dit.patch_size=2']


def matmul_peak(n: int) -> float:
  """FLOP/s of a jitted n^3 bfloat16 matmul on random data."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  mm = jax.jit(jnp.matmul)
  return 2 * n**3 / median_time(lambda: mm(a, b).block_until_ready(), 10)


def relative_error(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def attention_cases(smoke: bool) -> dict:
  """name -> (q shape (batch, tokens, heads, width), mask shape or None)."""
  if smoke:
    return {'spatial': ((4, 16, 2, 8), None), 'temporal_focus': ((16, 4, 2, 8), (16, 1, 4, 4))}
  b, f, s, h, d = 4, 10, 1024, 12, 64  # v2_3: 64x64, 10 frames; patch 2 -> 32x32 tokens
  return {
    'spatial': ((b * f, s, h, d), None),
    'temporal': ((b * s, f, h, d), None),
    'temporal_focus': ((b * s, f, h, d), (b * s, 1, f, f)),
    'full': ((b, f * s, h, d), None),
    'full_focus': ((b, f * s, h, d), (b, 1, f * s, f * s)),
  }


def check_attention(shape, mask_shape, repeats: int) -> dict:
  """cuDNN and XLA bf16 attention (output and grads) against float32 XLA, and times."""
  keys = jax.random.split(jax.random.key(1), 5)
  q, k, v, g = (jax.random.normal(key, shape, jnp.float32) for key in keys[:4])
  mask = None
  if mask_shape is not None:
    eye = jnp.eye(mask_shape[-1], dtype=bool)
    mask = jax.random.bernoulli(keys[4], 0.5, mask_shape) | eye

  def fwd_bwd(impl, dtype):
    def loss(q, k, v):
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
      return jnp.vdot(out.astype(jnp.float32), g), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(lambda q, k, v: grad(q.astype(dtype), k.astype(dtype), v.astype(dtype)))

  ref_grads, ref_out = fwd_bwd('xla', jnp.float32)(q, k, v)
  row = {'shape': list(shape), 'mask': mask_shape is not None}
  for impl in ('cudnn', 'xla'):
    try:
      fn = fwd_bwd(impl, jnp.bfloat16)
      grads, out = fn(q, k, v)
      row[f'{impl}_out_err'] = relative_error(out, ref_out)
      row[f'{impl}_grad_err'] = max(relative_error(a, r) for a, r in zip(grads, ref_grads))
      row[f'{impl}_ms'] = 1e3 * median_time(
        lambda fn=fn: jax.block_until_ready(fn(q, k, v)), repeats
      )
    except Exception as e:  # a case the kernel refuses is a result
      row[f'{impl}_error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}'
  return row


def _step_setup(overrides: list[str], abstract: bool):
  """(params count, train state, videos, train step) of config_v2_3 with overrides;
  with abstract, the state and videos are shapes only."""
  from video_diffusion.config import load_config
  from video_diffusion.diffusion.factory import split_diffusion
  from video_diffusion.train.optimizer import make_optimizer
  from video_diffusion.train.state import init_train_state
  from video_diffusion.train.step import StepOptions, make_train_step

  cfg = load_config(os.path.join(ROOT, 'configs', 'config_v2_3.yaml'), overrides)
  graphdef, params, constants = split_diffusion(cfg, abstract=abstract)
  tx = make_optimizer(cfg.trainer)
  init = lambda p: init_train_state(p, tx, seed=0)
  state = jax.eval_shape(init, params) if abstract else init(params)
  t, d = cfg.trainer, cfg.diffusion
  shape = (t.train_batch_size * t.gradient_accumulate_every, d.num_frames, d.image_size)
  shape += (d.image_size, d.channels)
  if abstract:
    videos = jax.ShapeDtypeStruct(shape, jnp.uint8)
  else:
    videos = jax.random.randint(jax.random.key(2), shape, 0, 256).astype(jnp.uint8)
  step = make_train_step(graphdef, constants, tx, StepOptions.from_config(cfg))
  return sum(x.size for x in jax.tree.leaves(params)), state, videos, step


def step_flops(overrides: list[str]) -> float:
  """XLA's FLOP count of the train step, counted by the CPU backend in a child process:
  the count is the same on every backend, but a GPU's cost analysis counts neither
  convolutions nor cuDNN or cuBLAS calls (jax 0.11.2 on an H200 gave none)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  argv = [sys.executable, os.path.abspath(__file__), '--flops-of', json.dumps(overrides)]
  done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f'counting FLOPs failed: {done.stderr.strip()[-300:]}')
  return float(done.stdout.strip().splitlines()[-1])


def print_flops_of(overrides: list[str]) -> None:
  _, state, videos, step = _step_setup(overrides, abstract=True)
  print(model_flops(step, state, videos) or 0.0)


def train_step_figures(overrides: list[str], force_xla: bool, repeats: int) -> dict:
  """Step time, params and XLA FLOPs of the project's bf16 train step of config_v2_3."""
  from video_diffusion.models import dit

  n_params, state, videos, step = _step_setup(overrides, abstract=False)
  choose = dit.attention_implementation
  try:
    if force_xla:
      dit.attention_implementation = lambda q, k: 'xla'
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, videos).compile()
    compile_s = time.perf_counter() - t0
  finally:
    dit.attention_implementation = choose
  attention = 'cudnn' if 'cudnn$fmha' in compiled.as_text() else 'xla'
  memory = compiled.memory_analysis()  # this executable's, unlike the process-wide peak
  memory_gb = None
  if memory is not None:
    held = memory.argument_size_in_bytes + memory.output_size_in_bytes
    memory_gb = (held - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 1e9
  holder = {'state': state}

  def one():
    holder['state'], metrics = compiled(holder['state'], videos)
    holder['loss'] = float(metrics['loss'])

  step_s = median_time(one, repeats)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(
    params_m=n_params / 1e6,
    batch=videos.shape[0],
    attention=attention,
    compile_s=compile_s,
    step_s=step_s,
    flops=step_flops(overrides),
    loss=holder['loss'],
    peak_gb=stats.get('peak_bytes_in_use', 0) / 1e9,
    step_memory_gb=memory_gb,
  )


def step_variants(smoke: bool) -> dict:
  """name -> (config overrides, force XLA attention)."""
  common = ['trainer.compute_dtype=bfloat16']
  if smoke:
    common += ['unet.dim=8', 'unet.dim_mults=[1,2]', 'diffusion.image_size=16']
    common += ['diffusion.num_frames=4', 'trainer.num_frames=4', 'trainer.train_batch_size=1']
  dit_b = common + ['diffusion.backbone=dit', 'diffusion.objective=flow'] + DIT_B
  if smoke:
    dit_b += ['dit.width=32', 'dit.depth=2', 'dit.heads=2']
  return {  # the Unet3D last: its GPU compile (convolution autotuning) took 257 s on an H200
    'dit_b_cudnn': (dit_b, False),
    'dit_b_xla': (dit_b, True),
    'dit_b_full_cudnn': (dit_b + ['dit.attention=full'], False),
    'unet3d': (common, False),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true', help='tiny shapes, to check the script')
  parser.add_argument('--output', default=os.environ.get('OUT', 'results/bench_gpu'))
  parser.add_argument('--budget-s', type=float, default=420.0, help='skip stages after this')
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--stages', default='attention,steps', help='of attention,steps')
  parser.add_argument('--flops-of', help=argparse.SUPPRESS)  # JSON overrides: print FLOPs
  parser.add_argument(
    '--variants', default=None, help='train-step variants, comma-separated (default: all)'
  )
  args = parser.parse_args()
  if args.flops_of is not None:
    return print_flops_of(json.loads(args.flops_of))
  os.makedirs(args.output, exist_ok=True)
  start = time.perf_counter()
  device = jax.devices()[0]
  results = {
    'device': device.device_kind,
    'platform': device.platform,
    'jax': jax.__version__,
    'attention': {},
    'steps': {},
  }

  def save():
    with open(os.path.join(args.output, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)

  print(f'{device.device_kind} ({device.platform}), jax {jax.__version__}', flush=True)
  results['peak_flops'] = matmul_peak(512 if args.smoke else 8192)
  print(f'bf16 matmul peak: {results["peak_flops"] / 1e12:.1f} TFLOP/s', flush=True)
  save()
  stages = args.stages.split(',')
  for name, (shape, mask_shape) in (
    attention_cases(args.smoke).items() if 'attention' in stages else ()
  ):
    results['attention'][name] = row = check_attention(shape, mask_shape, args.repeats)
    print(name, row, flush=True)
    save()
  variants = step_variants(args.smoke)
  chosen = args.variants.split(',') if args.variants else list(variants)
  unknown = sorted(set(chosen) - set(variants))
  if unknown:
    parser.error(f'unknown --variants {unknown}; choose from {", ".join(variants)}')
  for name in chosen if 'steps' in stages else ():
    overrides, force_xla = variants[name]
    if time.perf_counter() - start > args.budget_s:
      print(f'{name}: skipped (past --budget-s)', flush=True)
      continue
    try:
      results['steps'][name] = row = train_step_figures(overrides, force_xla, args.repeats)
    except Exception as e:  # recorded; the other variants still run
      results['steps'][name] = row = {'error': f'{type(e).__name__}: {str(e)[:300]}'}
    print(name, row, flush=True)
    save()

  peak = results['peak_flops']
  head = ['case', 'mask', 'cuDNN out err', 'cuDNN grad err', 'XLA out err', 'XLA grad err']
  head += ['cuDNN ms', 'XLA ms']
  rows = []
  for name, r in results['attention'].items():
    cells = [name, 'yes' if r['mask'] else 'no']
    for impl in ('cudnn', 'xla'):
      err = r.get(f'{impl}_error')
      cells += [err or fmt(r.get(f'{impl}_out_err'), '.1e'), fmt(r.get(f'{impl}_grad_err'), '.1e')]
    cells += [fmt(r.get('cudnn_ms'), '.2f'), fmt(r.get('xla_ms'), '.2f')]
    rows.append(cells)
  print('\n' + markdown(head, rows))
  rows = []
  for name, r in results['steps'].items():
    if 'error' in r:
      rows.append([name, r['error']] + [''] * 7)
      continue
    flops = r['flops']
    mfu = flops / r['step_s'] / peak if flops else None
    rows.append(
      [name, r.get('attention', '?'), f'{r["params_m"]:.1f}', str(r['batch']),
       f'{r["step_s"] * 1e3:.1f}',
       fmt(flops / 1e12 if flops else None, '.2f'), fmt(mfu and 100 * mfu, '.1f'),
       fmt(r.get('step_memory_gb'), '.1f'), f'{r["peak_gb"]:.1f}']
    )  # fmt: skip
  head = ['train step (bf16)', 'attention', 'params M', 'batch', 'ms/step', 'TFLOP/step']
  head += ['MFU %', 'step GB', 'process peak GB']
  print(f'\npeak {peak / 1e12:.0f} TFLOP/s (bf16 matmul)\n' + markdown(head, rows))


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
