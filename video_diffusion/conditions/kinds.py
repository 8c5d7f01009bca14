"""What a model is conditioned on: the one rule from the unet config section.

`ConditionSpec.from_unet(u)` names the kind ('class', 'vector', 'text' or
None) and the sizes the data must match. JAX-free: the data pipeline's grain
workers use it.
"""

from __future__ import annotations

import dataclasses

KIND_KEYS = {
  'class': 'unet.num_classes',
  'vector': 'unet.cond_dim',
  'text': 'unet.use_bert_text_cond',
}  # the config key that asks for each kind


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
  """kind: 'class' (int labels 0..num_classes-1), 'vector' (float (cond_dim,)
  vectors), 'text' (strings, embedded later) or None (unconditional)."""

  kind: str | None = None
  num_classes: int | None = None
  cond_dim: int | None = None

  def __post_init__(self):
    if self.kind is not None and self.kind not in KIND_KEYS:
      raise ValueError(
        f"condition kind must be None, 'class', 'vector' or 'text', got {self.kind!r}"
      )

  @classmethod
  def from_unet(cls, u) -> ConditionSpec:
    """'class' when u.num_classes is set, 'text' when u.use_bert_text_cond,
    'vector' when only u.cond_dim is set, None otherwise."""
    if u.num_classes is not None:
      kind = 'class'
    elif u.use_bert_text_cond:
      kind = 'text'
    else:
      kind = None if u.cond_dim is None else 'vector'
    return cls(kind, u.num_classes, u.cond_dim)


def condition_kind(cfg) -> str | None:
  """The condition kind of a run config (see ConditionSpec.from_unet)."""
  return ConditionSpec.from_unet(cfg.unet).kind
