"""How fast each kind of Unet3D layer runs alone, against the host's FP32 peak.

  python benchmarks/bench_layers.py [--repeats 5] [--batch 4] [--frames 10]

For each resolution of the seed_v2_2 config (64x64 with 32 channels down to
8x8 with 256), times one jitted forward and backward pass (the gradient of
every parameter and of the input) of a 3x3 convolution, the temporal
attention and the linear attention, and prints the achieved GFLOP/s as a
share of the practical FP32 peak (bench.py's 4096^3 matmul) measured in the
same run. FLOPs are XLA's count of the whole-frame program
(bench_model.model_flops). This bounds what a whole train step can reach
(docs/performance.md).
"""

from __future__ import annotations

import argparse

from bench import measure_peak
from bench_model import fmt, markdown, median_time, model_flops

import video_diffusion

# (height = width, channels) of the seed_v2_2 U-Net's levels.
LEVELS = ((64, 32), (32, 64), (16, 128), (8, 256))
HEADS, DIM_HEAD = 8, 32


def layers(channels: int) -> dict:
  """{name: nnx module} of the layers measured at a level of `channels` channels."""
  from flax import nnx

  from video_diffusion.models.attention import SpatialLinearAttention, TemporalAttention
  from video_diffusion.models.init import torch_default_init
  from video_diffusion.models.layers import SpatialConv

  rngs = nnx.Rngs(0)
  made = {
    '3x3 convolution': SpatialConv(channels, channels, 3, rngs=rngs),
    'temporal attention': TemporalAttention(channels, HEADS, DIM_HEAD, rngs=rngs),
    'linear attention': SpatialLinearAttention(channels, HEADS, DIM_HEAD, rngs=rngs),
  }
  for module in made.values():
    torch_default_init(module, 0)
  return made


def measure(module, shape: tuple, repeats: int) -> tuple[float, float | None]:
  """(median seconds, FLOPs) of one forward and backward pass of `module` on `shape`."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  graphdef, params = nnx.split(module)
  x = jax.random.normal(jax.random.key(0), shape)

  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

  grad = jax.grad(loss, argnums=(0, 1))
  flops = model_flops(grad, params, x)
  compiled = jax.jit(grad).lower(params, x).compile()
  seconds = median_time(lambda: jax.block_until_ready(compiled(params, x)), repeats)
  return seconds, flops


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--frames', type=int, default=10)
  args = parser.parse_args()
  peak = measure_peak()['gflops']
  rows = []
  for size, channels in LEVELS:
    shape = (args.batch, args.frames, size, size, channels)
    for name, module in layers(channels).items():
      seconds, flops = measure(module, shape, args.repeats)
      gflops = flops / 1e9 / seconds if flops else None
      rows.append(
        [
          f'{size}x{size}x{channels}',
          name,
          fmt(1000 * seconds, '.1f'),
          fmt(flops and flops / 1e9, '.2f'),
          fmt(gflops, '.1f'),
          fmt(gflops and 100 * gflops / peak, '.1f'),
        ]
      )
      print(' | '.join(rows[-1]), flush=True)
  print(
    f'\nforward and backward, {args.batch} videos of {args.frames} frames, '
    f'median of {args.repeats}; measured FP32 peak {peak:.0f} GFLOP/s\n'
  )
  head = ['frame x channels', 'layer', 'ms', 'GFLOP', 'GFLOP/s', '% of peak']
  print(markdown(head, rows))


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
