"""The train state: everything training needs to continue exactly."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  """Everything training needs to continue exactly: a pytree of arrays.

  step: optimiser steps done (int32 scalar). params / ema_params: pure dicts
  of the model's nnx.Param arrays. rng: raw key data; the key of step s is
  fold_in(rng, s), so no key needs carrying between steps.
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Step 0: EMA equal to the params, fresh optimiser state, key from `seed`."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=jax.tree.map(jnp.array, params),
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
  )
