"""The condition of a conditional model, from data batches or from the command line.

A model is unconditional, class-conditional (unet.num_classes: int labels),
text-conditional (unet.use_bert_text_cond: texts embedded by a local BERT) or
vector-conditional (unet.cond_dim: float vectors). Batches from the data
pipeline carry the raw condition under 'cond'; `model_condition` turns it into
what Unet3D takes (labels or float vectors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from video_diffusion.conditions.kinds import condition_kind
from video_diffusion.conditions.text import TextEncoder
from video_diffusion.models.conditioning import condition_width

__all__ = [
  'ConditionError',
  'condition_kind',
  'make_text_encoder',
  'model_condition',
  'requested_condition',
]


class ConditionError(ValueError):
  """A condition that does not fit the model; the message says what it needs."""


def make_text_encoder(cfg):
  """The TextEncoder of a text-conditional config (None for other configs)."""
  if condition_kind(cfg) != 'text':
    return None
  t = cfg.trainer
  if not t.text_encoder_path:
    raise ConditionError(
      'unet.use_bert_text_cond needs trainer.text_encoder_path: a local '
      'Hugging Face BERT folder with config.json, model.safetensors and '
      'tokenizer.json (e.g. a download of bert-base-cased)'
    )
  encoder = TextEncoder.from_pretrained(
    os.path.expanduser(t.text_encoder_path),
    pooling='cls' if cfg.diffusion.text_use_bert_cls else 'mean',
    max_length=t.text_max_length,
  )
  u = cfg.unet
  width = condition_width(u.dim, u.cond_dim, u.use_bert_text_cond, u.num_classes)
  if encoder.hidden_size != width:
    raise ConditionError(
      f'the text encoder in {t.text_encoder_path} makes '
      f'{encoder.hidden_size}-wide embeddings but the model takes {width}; '
      f'set unet.cond_dim: {encoder.hidden_size}'
    )
  return encoder


def model_condition(cfg, raw, encoder=None) -> np.ndarray | None:
  """What Unet3D takes for a batch's raw 'cond': int32 labels, or float32
  vectors (texts embedded by `encoder`)."""
  kind = condition_kind(cfg)
  if kind is None:
    return None
  if kind == 'class':
    return np.asarray(raw, np.int32)
  if kind == 'text':
    return np.asarray(encoder([str(text) for text in np.asarray(raw).reshape(-1)]), np.float32)
  return np.asarray(raw, np.float32)


def _cycle(values: Sequence, n: int) -> list:
  return [values[i % len(values)] for i in range(n)]


def requested_condition(
  cfg,
  batch_size: int,
  *,
  labels: Sequence[int] | None = None,
  texts: Sequence[str] | None = None,
  cond_path: str | None = None,
):
  """The raw condition of `batch_size` samples asked for on the command line
  (cycled when fewer are given), with defaults: classes 0, 1, 2, ... and
  trainer.sample_text. None for an unconditional model."""
  kind = condition_kind(cfg)
  given = [name for name, v in [('--class', labels), ('--text', texts), ('--cond', cond_path)] if v]
  wanted = {'class': '--class', 'text': '--text', 'vector': '--cond', None: None}[kind]
  wrong = [name for name in given if name != wanted]
  if wrong:
    what = 'is unconditional' if kind is None else f'takes {wanted} ({kind} condition)'
    raise ConditionError(f'{", ".join(wrong)} given but this model {what}')
  if kind == 'class':
    n = cfg.unet.num_classes
    labels = list(labels) if labels else list(range(min(n, batch_size)))
    bad = [label for label in labels if not 0 <= label < n]
    if bad:
      raise ConditionError(
        f'--class {bad[0]} is out of range: the model has {n} classes (0..{n - 1})'
      )
    return np.asarray(_cycle(labels, batch_size), np.int32)
  if kind == 'text':
    texts = (
      list(texts) if texts else ([cfg.trainer.sample_text] if cfg.trainer.sample_text else None)
    )
    if not texts:
      raise ConditionError(
        'this model is text-conditional: pass --text "..." (or set trainer.sample_text)'
      )
    return np.asarray(_cycle(texts, batch_size))
  if kind == 'vector':
    if not cond_path:
      raise ConditionError(
        f'this model takes {cfg.unet.cond_dim}-wide condition vectors: '
        'pass --cond FILE.npy holding (n, cond_dim) or (cond_dim,) floats'
      )
    try:
      vectors = np.load(os.path.expanduser(cond_path), allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ConditionError(f'--cond {cond_path}: cannot read as a .npy array: {e}') from None
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != cfg.unet.cond_dim:
      raise ConditionError(
        f'--cond {cond_path}: expected (n, {cfg.unet.cond_dim}) floats, found shape {vectors.shape}'
      )
    return np.stack(_cycle(list(vectors), batch_size))
  return None
