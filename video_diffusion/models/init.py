"""The one weight initialisation of the Unet3D: PyTorch's defaults, drawn on the host.

Layers are built with `deferred` initialisers, which allocate nothing; the
module's constructor then calls `torch_default_init(module, weight_seed(rngs))`,
which draws every parameter once with numpy. No XLA program is compiled (an
eager or jitted JAX initialisation compiles for ~10 s on a CPU), and
`Unet3D(..., rngs=nnx.Rngs(s))` is exactly the model of a config with
`unet.rngs_seed: s`. A layer built on its own (outside Unet3D) holds shapes
only until `torch_default_init(layer, seed)` sets its weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def deferred(key, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  """An initialiser that only records the shape: torch_default_init sets the value."""
  del key
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def deferred_param(shape, dtype=jnp.float32) -> nnx.Param:
  """A parameter whose value torch_default_init sets."""
  return nnx.Param(deferred(None, shape, dtype))


def weight_seed(rngs: nnx.Rngs) -> int | None:
  """The numpy seed of the weights: one draw of the params stream (None under
  nnx.eval_shape, where there is nothing to set)."""
  key = rngs.params()
  if isinstance(key, jax.core.Tracer):
    return None
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _fan_in(layer: nnx.Module) -> int:
  """PyTorch's fan_in of a Linear/Conv kernel (..., in, out); a layer with
  `torch_fan_in_axis` says which axis torch counts instead (ConvTranspose)."""
  shape = layer.kernel.shape
  return int(np.prod(shape[:-2])) * shape[getattr(layer, 'torch_fan_in_axis', -2)]


def torch_default_init(module: nnx.Module, seed: int) -> None:
  """Sets every parameter of `module` as PyTorch initialises the reference, drawn
  on the host with numpy: Linear, Conv and Upsample kernels and biases uniform in
  +-1/sqrt(fan_in) (kaiming_uniform with a=sqrt(5)); norm gains ('gamma') ones;
  every other parameter (position-bias and null-condition embeddings) standard
  normal."""
  done = set()
  for index, (_, layer) in enumerate(nnx.iter_modules(module)):
    if hasattr(layer, 'kernel') and isinstance(layer.kernel, nnx.Param):
      bound = 1.0 / math.sqrt(_fan_in(layer))
      rng = np.random.default_rng([seed, index])
      for var in (layer.kernel, getattr(layer, 'bias', None)):
        if var is not None:
          var.set_value(jnp.asarray(rng.uniform(-bound, bound, var.shape).astype(var.dtype)))
          done.add(id(var))
  rng = np.random.default_rng([seed, 1 << 20])
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Param) and id(var) not in done:
      value = np.ones(var.shape) if path[-1] == 'gamma' else rng.standard_normal(var.shape)
      var.set_value(jnp.asarray(value.astype(var.dtype)))
