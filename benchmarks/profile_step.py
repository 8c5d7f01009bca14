"""Per-operation time breakdown of the jitted train step (docs/performance.md).

  python benchmarks/profile_step.py [--configs tiny,seed_v2_2] [--steps 2] [--top 12]
                                   [--malloc auto]

Traces --steps train steps of bench_model's configs with jax.profiler (XLA's
per-thunk TraceMe events, --xla_cpu_enable_xprof_traceme), reads the trace
back with jax.profiler.ProfileData and sums each HLO instruction's time over
all threads. Instructions are attributed to the model part whose
jax.named_scope they carry (layers.scoped: conv, temporal_attention, ...),
split into forward and backward (an op_name under `transpose(` is backward)
and into kinds: library matmul/convolution (YNNPACK or Eigen), XLA dot,
copies and transposes, other fused loops. Prints Markdown tables. Like
train.py, it runs with the allocator of --malloc preloaded (it re-executes
itself once), so the profile is of the step users get.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

# Added once: the re-executed process inherits it.
os.environ['XLA_FLAGS'] = ' '.join(
  dict.fromkeys(os.environ.get('XLA_FLAGS', '').split() + ['--xla_cpu_enable_xprof_traceme=true'])
)

from bench_model import CONFIGS, build_model, markdown

import video_diffusion
from video_diffusion.runtime.allocator import active_allocator, reexec_with_allocator

# Innermost first: an op under temporal_attention/qkv_projection is a projection.
SCOPES = (
  'qkv_projection',
  'out_projection',
  'temporal_attention',
  'linear_attention',
  'full_attention',
  'upsample_conv',
  'conv',
  'rms_norm',
  'layer_norm',
  'time_mlp',
  'res_conv',
)
# The shape is one token, or a tuple with spaces (a loop's state).
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) (\w[\w\-]*)\((.*)$')
COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$')
CALLED = re.compile(r'(?:calls|body|condition|to_apply)=%?([\w.\-]+)')


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (opcode, op_name metadata)} of an optimised HLO module.

  An instruction without op_name (XLA drops it from some fusions inside loop
  bodies) takes that of the instruction whose computation holds it: the
  loop, call or fusion it runs in, so tiled attention keeps its scope."""
  out, computation_of, caller_of = {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    header = COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    instruction = INSTRUCTION.match(line)
    if not instruction:
      continue
    name, opcode, rest = instruction.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    out[name] = (opcode, op_name.group(1) if op_name else '')
    computation_of[name] = computation
    for called in CALLED.findall(rest):
      caller_of.setdefault(called, name)
  for name, (opcode, op_name) in out.items():
    holder = name
    while not op_name and computation_of.get(holder) in caller_of:
      holder = caller_of[computation_of[holder]]
      op_name = out[holder][1]
    out[name] = (opcode, op_name)
  return out


def classify(name: str, opcode: str, op_name: str) -> tuple[str, str, str]:
  """(model part, kind, direction) of one HLO instruction."""
  if name.startswith(('ynn', 'xnn', 'onednn')):
    kind = 'matmul/conv library'
  elif opcode in ('dot', 'convolution'):
    kind = f'XLA {opcode}'
  elif name.startswith(('copy', 'transpose')) or opcode in ('copy', 'transpose', 'concatenate'):
    kind = 'copy/transpose'
  else:
    kind = 'fused loop'
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  if any(word in op_name for word in ('adam', 'optax', 'apply_updates')):
    return 'optimizer', kind, direction
  words = set(re.split(r'\W+', op_name))
  parts = [s for s in SCOPES if s in words]
  part = parts[0] if parts else 'other (time embedding, concat, loss)'
  if 'temporal_attention' in words and part in ('qkv_projection', 'out_projection'):
    part = f'temporal_attention/{part}'
  elif part == 'temporal_attention':
    part = 'temporal_attention/core'
  return part, kind, direction


def profile(name: str, steps: int) -> tuple[collections.Counter, float]:
  """({(part, kind, direction): seconds per step}, wall seconds per step) of config `name`."""
  import time

  import jax
  import optax
  from flax import nnx

  diffusion = build_model(name)
  shape = (CONFIGS[name]['batch'],) + diffusion.video_shape
  graphdef, params, rest = nnx.split(diffusion, nnx.Param, ...)
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def train_step(params, opt_state, batch, key):
    loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p, rest)(batch, key))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batch = jax.random.uniform(jax.random.key(1), shape)
  step = (
    jax.jit(train_step, donate_argnums=(0, 1))
    .lower(params, opt_state, batch, jax.random.key(2))
    .compile()
  )
  instructions = hlo_instructions(step.as_text())
  for i in range(2):  # warm-up
    params, opt_state, loss = step(params, opt_state, batch, jax.random.key(i))
    loss.block_until_ready()
  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    with jax.profiler.trace(logdir):
      for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(i))
        loss.block_until_ready()
    wall = (time.perf_counter() - start) / steps
    path = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    seconds = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in instructions:
            seconds[classify(event.name, *instructions[event.name])] += (
              event.duration_ns / 1e9 / steps
            )
  return seconds, wall


def tables(name: str, seconds: collections.Counter, wall: float, top: int) -> str:
  total = sum(seconds.values())
  by_part, by_kind = collections.Counter(), collections.Counter()
  for (part, kind, direction), s in seconds.items():
    by_part[part, direction] += s
    by_kind[kind, direction] += s
  parts = sorted(
    {p for p, _ in by_part}, key=lambda p: -(by_part[p, 'forward'] + by_part[p, 'backward'])
  )
  pct = lambda s: f'{100 * s / total:.1f}%'
  rows = [
    [
      p,
      f'{by_part[p, "forward"]:.3f}',
      f'{by_part[p, "backward"]:.3f}',
      pct(by_part[p, 'forward'] + by_part[p, 'backward']),
    ]
    for p in parts
  ]
  kinds = sorted(
    {k for k, _ in by_kind}, key=lambda k: -(by_kind[k, 'forward'] + by_kind[k, 'backward'])
  )
  kind_rows = [
    [
      k,
      f'{by_kind[k, "forward"]:.3f}',
      f'{by_kind[k, "backward"]:.3f}',
      pct(by_kind[k, 'forward'] + by_kind[k, 'backward']),
    ]
    for k in kinds
  ]
  detail = [[p, k, d, f'{s:.3f}', pct(s)] for (p, k, d), s in seconds.most_common(top)]
  return '\n\n'.join(
    [
      f'### {name}: {wall:.2f} s per traced step, {total:.2f} s of operations '
      f'summed over threads ({os.cpu_count()} cores)',
      markdown(['model part', 'forward (s)', 'backward (s)', 'share'], rows),
      markdown(['kind', 'forward (s)', 'backward (s)', 'share'], kind_rows),
      markdown(['model part', 'kind', 'direction', 'seconds', 'share'], detail),
    ]
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='tiny,seed_v2_2')
  parser.add_argument('--steps', type=int, default=2, help='traced steps (after 2 warm-ups)')
  parser.add_argument('--top', type=int, default=12, help='rows of the detailed table')
  parser.add_argument('--malloc', default='auto', help='auto, glibc, mimalloc, jemalloc, tcmalloc')
  args = parser.parse_args()
  reexec_with_allocator(args.malloc)
  print(f'malloc: {active_allocator()}\n', flush=True)
  for name in args.configs.split(','):
    seconds, wall = profile(name, args.steps)
    print(tables(name, seconds, wall, args.top), end='\n\n', flush=True)


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  sys.exit(main())
