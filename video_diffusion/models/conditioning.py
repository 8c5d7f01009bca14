"""What every denoiser shares about its condition: the width of the condition
vector, random masks, and classifier-free guidance.

Videos are channels-last (batch, frames, height, width, channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

BERT_MODEL_DIM = 768


def condition_width(
  dim: int, cond_dim: int | None, use_bert_text_cond: bool, num_classes: int | None
) -> int | None:
  """Width of the condition vector a Unet3D concatenates to its time embedding:
  cond_dim, else 768 (BERT) for text, 4 * dim for class labels; None when unconditional."""
  if cond_dim is not None:
    return cond_dim
  if use_bert_text_cond:
    return BERT_MODEL_DIM
  if num_classes is not None:
    return 4 * dim
  return None


def prob_mask(key: jax.Array | None, batch: int, prob: float, what: str) -> jax.Array:
  """Boolean (batch,) mask, True with probability `prob`; needs a key if 0 < prob < 1."""
  if prob == 1:
    return jnp.ones((batch,), bool)
  if prob == 0:
    return jnp.zeros((batch,), bool)
  if key is None:
    raise ValueError(f'{what}={prob} draws random masks: pass a PRNG key (key=...).')
  return jax.random.uniform(key, (batch,)) < prob


class GuidedDenoiser(nnx.Module):
  """Classifier-free guidance for a denoiser whose __call__(x, time, cond, ...,
  null_mask=...) replaces the condition by its learned null one where null_mask
  is True, and which sets `has_cond`."""

  has_cond: bool

  def forward_with_cond_scale(
    self, x, time, cond=None, cond_scale: float = 2.0, **kwargs
  ) -> jax.Array:
    """Classifier-free guidance: null + (cond - null) * cond_scale in one batched call."""
    if cond_scale == 1 or not self.has_cond:
      return self(x, time, cond, null_cond_prob=0.0, **kwargs)
    batch = x.shape[0]
    both = self._guided_pair_call(x, time, cond, **kwargs)
    logits, null_logits = both[:batch], both[batch:]
    return null_logits + (logits - null_logits) * cond_scale

  def _guided_pair_call(self, x, time, cond, focus_present_mask=None, **kwargs):
    double = lambda a: None if a is None else jnp.concatenate([a, a], axis=0)
    null_mask = jnp.arange(2 * x.shape[0]) >= x.shape[0]
    return self(
      double(x),
      double(time),
      double(cond),
      null_mask=null_mask,
      focus_present_mask=double(focus_present_mask),
      **kwargs,
    )
