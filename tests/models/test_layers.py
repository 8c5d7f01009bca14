"""layers.conv_input: a convolution's input stored once for its weight gradient on CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.models import layers
from video_diffusion.models.init import torch_default_init

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)


def _loss_and_grad():
  """A ResnetBlock's jitted value_and_grad over its parameters, and those parameters."""
  block = layers.ResnetBlock(4, 8, time_emb_dim=8, rngs=nnx.Rngs(0))
  torch_default_init(block, 0)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16, 16, 4))
  time_emb = jax.random.normal(jax.random.key(1), (2, 8))
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p, rest)(x, time_emb) ** 2)

  return jax.jit(jax.value_and_grad(loss)), params


def _operand_counts_of_fusions_feeding_convolutions(hlo: str) -> list[int]:
  """For each fusion that a convolution reads, how many arrays that fusion reads."""
  instructions = {}
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w-]+)\((.*?)\)', line)
    if m:
      instructions[m.group(1)] = (m.group(2), re.findall(r'%([\w.\-]+)', m.group(3)))
  counts = []
  for opcode, operands in instructions.values():
    if opcode == 'convolution':
      for name in operands:
        if instructions.get(name, ('',))[0] == 'fusion':
          counts.append(len(instructions[name][1]))
  return counts


def _without_conv_input(monkeypatch):
  monkeypatch.setattr(layers, 'conv_input', lambda x: x)


def test_weight_gradient_transposes_read_one_stored_array(monkeypatch):
  # Without conv_input, XLA recomputes block2's input (RMSNorm, scale/shift, SiLU:
  # 7 arrays read) inside the transpose that feeds its weight-gradient convolution.
  step, params = _loss_and_grad()
  counts = _operand_counts_of_fusions_feeding_convolutions(step.lower(params).compile().as_text())
  assert counts and max(counts) == 1, counts

  _without_conv_input(monkeypatch)
  step, params = _loss_and_grad()
  plain = _operand_counts_of_fusions_feeding_convolutions(step.lower(params).compile().as_text())
  assert max(plain) > 1, plain  # the case above guards against, still produced by XLA


def test_conv_input_changes_no_loss_or_gradient(monkeypatch):
  step, params = _loss_and_grad()
  loss, grads = step(params)
  _without_conv_input(monkeypatch)
  plain_step, _ = _loss_and_grad()
  plain_loss, plain_grads = plain_step(params)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('first', [0.5, np.nan])
def test_conv_input_is_the_identity_unless_the_input_holds_a_nan(first):
  x = jnp.arange(24.0).reshape(2, 3, 4).at[0, 0, 0].set(first)
  y, pullback = jax.vjp(layers.conv_input, x)
  if np.isnan(first):
    assert np.isnan(np.asarray(y)).all()
  else:
    np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(pullback(jnp.ones_like(x))[0], jnp.ones_like(x))
