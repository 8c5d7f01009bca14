"""BERT encoder in Flax NNX: Hugging Face's BertModel without its pooler, for inference.

Post-LN encoder layers, embeddings word + position + token type 0, no dropout.
`hf_name` gives the Hugging Face checkpoint name of each parameter path.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

# hidden_act of a Hugging Face config -> activation: 'gelu' is the exact (erf) GELU.
ACTIVATIONS = {
  'gelu': functools.partial(jax.nn.gelu, approximate=False),
  'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
  'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
}
POOLINGS = ('mean', 'cls')


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BertConfig that shape the network."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
    cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False, rngs=rngs
  )


class BertEmbeddings(nnx.Module):
  """Word + absolute position + token-type-0 embeddings, then LayerNorm."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.word_embeddings = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, d, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
    self.norm = _layer_norm(cfg, rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    positions = jnp.arange(ids.shape[1])
    x = (
      self.word_embeddings(ids)
      + self.position_embeddings(positions)[None]
      + self.token_type_embeddings(jnp.zeros((), jnp.int32))
    )
    return self.norm(x)


class BertLayer(nnx.Module):
  """Self-attention and feed-forward, each followed by residual + LayerNorm (post-LN)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    d, inner = cfg.hidden_size, cfg.intermediate_size
    self.heads = cfg.num_attention_heads
    self.hidden_act = cfg.hidden_act
    self.query = nnx.Linear(d, d, rngs=rngs)
    self.key = nnx.Linear(d, d, rngs=rngs)
    self.value = nnx.Linear(d, d, rngs=rngs)
    self.attention_output = nnx.Linear(d, d, rngs=rngs)
    self.attention_norm = _layer_norm(cfg, rngs)
    self.intermediate = nnx.Linear(d, inner, rngs=rngs)
    self.output = nnx.Linear(inner, d, rngs=rngs)
    self.output_norm = _layer_norm(cfg, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x (b, n, d); mask (b, n), true where a key may be attended to."""
    b, n, d = x.shape
    split_heads = lambda t: t.reshape(b, n, self.heads, d // self.heads)
    q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
    sim = jnp.einsum('bihd,bjhd->bhij', q, k) / math.sqrt(d // self.heads)
    sim = jnp.where(mask[:, None, None, :], sim, jnp.finfo(sim.dtype).min)
    attn = jax.nn.softmax(sim, axis=-1)
    out = jnp.einsum('bhij,bjhd->bihd', attn, v).reshape(b, n, d)
    x = self.attention_norm(x + self.attention_output(out))
    hidden = ACTIVATIONS[self.hidden_act](self.intermediate(x))
    return self.output_norm(x + self.output(hidden))


class BertEncoder(nnx.Module):
  """BertModel's last hidden states (b, n, hidden_size) of token ids (b, n)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.embeddings = BertEmbeddings(cfg, rngs=rngs)
    self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids int (b, n); mask (b, n), nonzero for real tokens and zero for padding."""
    mask = mask.astype(bool)
    x = self.embeddings(ids)
    for layer in self.layers:
      x = layer(x, mask)
    return x


def pool(hidden: jax.Array, mask: jax.Array, pooling: str, eps: float = 1e-8) -> jax.Array:
  """(b, n, d) -> (b, d). 'cls': the first token's state. 'mean': the mean over the
  unpadded tokens after [CLS], as video-diffusion-pytorch's bert_embed."""
  if pooling == 'cls':
    return hidden[:, 0]
  if pooling != 'mean':
    raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
  weights = mask[:, 1:, None].astype(hidden.dtype)
  return (hidden[:, 1:] * weights).sum(axis=1) / (weights.sum(axis=1) + eps)


_HF_LAYER = {
  'query': 'attention.self.query',
  'key': 'attention.self.key',
  'value': 'attention.self.value',
  'attention_output': 'attention.output.dense',
  'attention_norm': 'attention.output.LayerNorm',
  'intermediate': 'intermediate.dense',
  'output': 'output.dense',
  'output_norm': 'output.LayerNorm',
}
_HF_PARAM = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}


def hf_name(path: tuple) -> str:
  """The BertModel state-dict name of a BertEncoder parameter path, e.g.
  ('layers', 0, 'query', 'kernel') -> 'encoder.layer.0.attention.self.query.weight'."""
  *modules, param = (str(p) for p in path)
  if modules[0] == 'embeddings':
    stem = 'embeddings.' + ('LayerNorm' if modules[1] == 'norm' else modules[1])
  else:
    stem = f'encoder.layer.{modules[1]}.{_HF_LAYER[modules[2]]}'
  return f'{stem}.{_HF_PARAM[param]}'


def hf_params(model: BertEncoder) -> dict[str, tuple[nnx.Param, bool]]:
  """HF name -> (parameter, whether torch stores it transposed: Linear kernels)."""
  return {
    hf_name(path): (var, path[-1] == 'kernel')
    for path, var in nnx.iter_graph(model)
    if isinstance(var, nnx.Param)
  }


def abstract_encoder(cfg: BertConfig) -> BertEncoder:
  """A BertEncoder with ShapeDtypeStruct parameters (nothing initialised or compiled)."""
  return nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
