"""A space-time diffusion transformer (DiT, Peebles & Xie 2023; Latte, Ma et al. 2024).

Videos are channels-last (batch, frames, height, width, channels). They are cut
into patches of temporal_patch_size x patch_size x patch_size pixels, one token
each, held as (batch, frame patches, patches per frame, width). Blocks are
adaLN-Zero transformer blocks conditioned on the time embedding plus the
condition; attention is factorised (blocks alternately within a frame and
across frames, as Latte) or full (all space-time tokens). The call signature is
Unet3D's, so the diffusion, samplers and trainer take either.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.models.conditioning import GuidedDenoiser, condition_width, prob_mask
from video_diffusion.models.init import deferred, deferred_param, weight_seed
from video_diffusion.models.layers import linear, scoped, sinusoidal_embedding

TIME_FREQUENCIES = 256  # width of the sinusoidal time features (as DiT)
ATTENTIONS = ('factorised', 'full')
POSITIONS = ('rope3d', 'sincos')


CUDNN_MIN_KEYS = 128  # an H200 ran 10-key attention 3x faster in XLA, 1024 keys 4x slower


def attention_implementation(q: jax.Array, k: jax.Array) -> str | None:
  """'cudnn' where cuDNN's fused attention takes (batch, tokens, heads, head width)
  queries `q` and keys `k` and is the faster: an NVIDIA GPU, bfloat16 or float16,
  head width a multiple of 8 up to 128, at least CUDNN_MIN_KEYS keys; else None
  (XLA's attention, which jax picks for None)."""
  d = q.shape[-1]
  fits = q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= 128
  fits = fits and k.shape[1] >= CUDNN_MIN_KEYS
  return 'cudnn' if fits and jax.default_backend() == 'gpu' else None


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention of (batch, tokens, heads, head width) arrays through
  jax.nn.dot_product_attention, with cuDNN's fused kernel where it fits
  (attention_implementation) and XLA's elsewhere; mask broadcasts to (batch,
  heads, queries, keys), True = attend."""
  return jax.nn.dot_product_attention(
    q, k, v, mask=mask, implementation=attention_implementation(q, k)
  )


def _layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm over the last axis without gain or bias (adaLN supplies them), in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _modulate(x, shift, scale):
  """x * (1 + scale) + shift with (batch, width) shift and scale over (batch, ..., width)."""
  expand = lambda a: a.reshape(a.shape[:1] + (1,) * (x.ndim - 2) + a.shape[1:])
  return x * (1 + expand(scale)) + expand(shift)


def _axis_split(width: int) -> tuple[int, int, int]:
  """Features per axis (frame, row, column) of a 3-D position code of `width`
  (each even; the column takes the rest)."""
  part = 2 * (width // 6)
  return part, part, width - 2 * part


def _frequencies(count: int) -> np.ndarray:
  return 1.0 / 10000.0 ** (np.arange(count, dtype=np.float64) / max(count, 1))


def token_grid(frames: int, height: int, width: int) -> np.ndarray:
  """(frames * height * width, 3) frame, row and column of each token, in token order."""
  f, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing='ij')
  return np.stack([f, y, x], -1).reshape(-1, 3).astype(np.float64)


def sincos_positions(grid: np.ndarray, width: int) -> np.ndarray:
  """Fixed 3-D sinusoidal position codes (tokens, width): sin and cos per axis."""
  parts = []
  for axis, size in enumerate(_axis_split(width)):
    angles = grid[:, axis : axis + 1] * _frequencies(size // 2)[None]
    parts += [np.sin(angles), np.cos(angles)]
  return np.concatenate(parts, -1).astype(np.float32)


def rope_angles(grid: np.ndarray, head_width: int) -> np.ndarray:
  """Rotary angles (tokens, head_width / 2): the rotated pairs split over frame,
  row and column."""
  parts = []
  for axis, size in enumerate(_axis_split(head_width)):
    parts.append(grid[:, axis : axis + 1] * _frequencies(size // 2)[None])
  return np.concatenate(parts, -1).astype(np.float32)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates (batch, frames, tokens, heads, head width) by angles (frames, tokens,
  head width / 2): the first half of the features paired with the second."""
  half = x.shape[-1] // 2
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class DiTBlock(nnx.Module):
  """adaLN-Zero block: attention then MLP, each with shift, scale and gate from the
  condition. kind: 'spatial' (within each frame), 'temporal' (across frames at
  each patch) or 'full' (all tokens)."""

  def __init__(self, width, heads, mlp_ratio, kind, *, dtype, rngs):
    self.kind, self.heads = kind, heads
    hidden = int(round(width * mlp_ratio))
    self.qkv = linear(width, 3 * width, dtype=dtype, rngs=rngs)
    self.proj = linear(width, width, dtype=dtype, rngs=rngs)
    self.fc1 = linear(width, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, width, dtype=dtype, rngs=rngs)
    self.modulation = linear(width, 6 * width, rngs=rngs)  # zero-initialised

  def _attention(self, h, angles, focus):
    b, f, s, width = h.shape
    q, k, v = jnp.split(self.qkv(h).reshape(b, f, s, 3 * self.heads, -1), 3, axis=3)
    if angles is not None:
      q, k = apply_rope(q, angles), apply_rope(k, angles)
    mask = None
    if self.kind == 'spatial':
      fold = lambda a: a.reshape((b * f, s) + a.shape[3:])
      out = attend(fold(q), fold(k), fold(v)).reshape(b, f, s, width)
    elif self.kind == 'temporal':
      fold = lambda a: a.transpose(0, 2, 1, 3, 4).reshape((b * s, f) + a.shape[3:])
      if focus is not None:  # focused videos attend to their own frame only
        eye = jnp.eye(f, dtype=bool)
        mask = eye | ~focus[:, None, None, None]  # (b, 1, f, f)
        mask = jnp.broadcast_to(mask[:, None], (b, s, 1, f, f)).reshape(b * s, 1, f, f)
      out = attend(fold(q), fold(k), fold(v), mask)
      out = out.reshape(b, s, f, width).transpose(0, 2, 1, 3)
    else:
      fold = lambda a: a.reshape((b, f * s) + a.shape[3:])
      if focus is not None:
        frame = jnp.repeat(jnp.arange(f), s)
        same = frame[:, None] == frame[None, :]
        mask = same[None, None] | ~focus[:, None, None, None]  # (b, 1, fs, fs)
      out = attend(fold(q), fold(k), fold(v), mask).reshape(b, f, s, width)
    return self.proj(out)

  @scoped('dit_block')
  def __call__(self, x, c, angles, focus):
    """x (batch, frames, tokens, width) float32, c (batch, width) the SiLU'd condition."""
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(c), 6, axis=-1)
    h = _modulate(_layer_norm(x), shift1, scale1).astype(self.qkv.dtype)
    x = x + gate1[:, None, None] * self._attention(h, angles, focus).astype(jnp.float32)
    h = _modulate(_layer_norm(x), shift2, scale2).astype(self.qkv.dtype)
    h = self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))
    return x + gate2[:, None, None] * h.astype(jnp.float32)


def _run_block(block, x, c, angles, focus):
  return block(x, c, angles, focus)


class DiT(GuidedDenoiser):
  """Space-time transformer denoiser with Unet3D's call: x (batch, frames, height,
  width, channels) and times (batch,) in, (..., out_dim) float32 out.

  cond is int labels (batch,) with num_classes (embedded to `width`), or
  (batch, cond_dim) vectors (the text embedding with use_bert_text_cond, 768
  wide unless cond_dim says otherwise), projected to `width`. A learned null
  condition replaces it where null_mask (or a draw of null_cond_prob) says, for
  classifier-free guidance. focus_present_mask (batch,) keeps those videos'
  attention within each frame. `dtype` is the compute dtype of the matmuls;
  params, norms and the residual stream stay float32. remat recomputes each
  block in the backward pass. Frames and size must be multiples of the patch.
  """

  def __init__(
    self,
    *,
    channels: int,
    out_dim: int | None = None,
    patch_size: int = 2,
    temporal_patch_size: int = 1,
    width: int = 256,
    depth: int = 8,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    attention: str = 'factorised',
    positions: str = 'rope3d',
    num_classes: int | None = None,
    cond_dim: int | None = None,
    use_bert_text_cond: bool = False,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    rngs: nnx.Rngs,
  ):
    if attention not in ATTENTIONS:
      raise ValueError(f'attention={attention!r}: use one of {", ".join(ATTENTIONS)}.')
    if positions not in POSITIONS:
      raise ValueError(f'positions={positions!r}: use one of {", ".join(POSITIONS)}.')
    if width % heads or (width // heads) % 2:
      raise ValueError(f'width={width} must split into heads={heads} heads of an even width.')
    self.patch = (temporal_patch_size, patch_size, patch_size)
    self.width, self.positions, self.remat = width, positions, bool(remat)
    self.head_width = width // heads
    self.out_dim = channels if out_dim is None else out_dim
    patch_pixels = temporal_patch_size * patch_size * patch_size
    self.patch_embed = linear(patch_pixels * channels, width, dtype=dtype, rngs=rngs)
    self.time_fc1 = linear(TIME_FREQUENCIES, width, rngs=rngs)
    self.time_fc2 = linear(width, width, rngs=rngs)

    self.num_classes = num_classes
    self.has_cond = num_classes is not None or cond_dim is not None or use_bert_text_cond
    class_embed = cond_proj = null_cond_emb = None
    if num_classes is not None:
      class_embed = nnx.Embed(num_classes, width, embedding_init=deferred, rngs=rngs)
      null_cond_emb = deferred_param((width,))
    elif self.has_cond:
      cond_width = condition_width(width, cond_dim, use_bert_text_cond, None)
      cond_proj = linear(cond_width, width, rngs=rngs)
      null_cond_emb = deferred_param((cond_width,))
    self.class_embed, self.cond_proj = nnx.data(class_embed), nnx.data(cond_proj)
    self.null_cond_emb = nnx.data(null_cond_emb)

    kinds = ['full'] * depth if attention == 'full' else ['spatial', 'temporal'] * depth
    self.blocks = nnx.List(
      [DiTBlock(width, heads, mlp_ratio, kind, dtype=dtype, rngs=rngs) for kind in kinds[:depth]]
    )
    self.final_modulation = linear(width, 2 * width, rngs=rngs)  # zero-initialised
    self.final = linear(width, patch_pixels * self.out_dim, dtype=dtype, rngs=rngs)  # zero
    seed = weight_seed(rngs)
    if seed is not None:  # under nnx.eval_shape there is nothing to set
      dit_init(self, seed)

  def _condition(self, time, cond, null_mask):
    """SiLU(time embedding + condition embedding), (batch, width) float32."""
    t = sinusoidal_embedding(time, TIME_FREQUENCIES)
    c = self.time_fc2(jax.nn.silu(self.time_fc1(t)))
    if self.has_cond:
      e = self.class_embed(cond) if self.class_embed is not None else cond.astype(jnp.float32)
      e = jnp.where(null_mask[:, None], self.null_cond_emb[...][None, :], e)
      c = c + (self.cond_proj(e) if self.cond_proj is not None else e)
    return jax.nn.silu(c)

  def __call__(
    self,
    x: jax.Array,
    time: jax.Array,
    cond: jax.Array | None = None,
    null_cond_prob: float = 0.0,
    focus_present_mask: jax.Array | None = None,
    prob_focus_present: float = 0.0,
    *,
    key: jax.Array | None = None,
    null_mask: jax.Array | None = None,
    image_mask: jax.Array | None = None,
  ) -> jax.Array:
    """The prediction (b, f, h, w, out_dim), float32, for x (b, f, h, w, c) at times (b,);
    `image_mask` (b,) marks stacks of independent images, whose frames stay apart."""
    if self.has_cond and cond is None:
      raise ValueError('This DiT was built with a condition (classes, vectors or text): pass cond.')
    b, f, h, w, _ = x.shape
    pt, p, _ = self.patch
    if f % pt or h % p or w % p:
      raise ValueError(
        f'a DiT with patches of {pt}x{p}x{p} (frames x height x width) needs frames and size '
        f'that are multiples of them; got {f} frames of {h}x{w}'
      )
    focus_key, null_key = (None, None) if key is None else jax.random.split(key)
    if focus_present_mask is None and prob_focus_present:
      focus_present_mask = prob_mask(focus_key, b, prob_focus_present, 'prob_focus_present')
    if image_mask is not None:
      focus_present_mask = (
        image_mask if focus_present_mask is None else focus_present_mask | image_mask
      )
    if self.has_cond and null_mask is None:
      null_mask = prob_mask(null_key, b, null_cond_prob, 'null_cond_prob')
    frames, rows, cols = f // pt, h // p, w // p

    tokens = x.reshape(b, frames, pt, rows, p, cols, p, -1).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    tokens = self.patch_embed(tokens.reshape(b, frames, rows * cols, -1).astype(jnp.float32))
    tokens = tokens.astype(jnp.float32)
    grid = token_grid(frames, rows, cols)
    angles = None
    if self.positions == 'sincos':
      tokens = tokens + sincos_positions(grid, self.width).reshape(frames, rows * cols, -1)
    else:
      angles = jnp.asarray(rope_angles(grid, self.head_width).reshape(frames, rows * cols, -1))
    c = self._condition(time, cond, null_mask)

    run = nnx.remat(_run_block) if self.remat else _run_block
    for block in self.blocks:
      tokens = run(block, tokens, c, angles, focus_present_mask)

    shift, scale = jnp.split(self.final_modulation(c), 2, axis=-1)
    out = self.final(_modulate(_layer_norm(tokens), shift, scale).astype(self.final.dtype))
    out = out.reshape(b, frames, rows, cols, pt, p, p, self.out_dim)
    out = out.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, f, h, w, self.out_dim)
    return out.astype(jnp.float32)


_ZERO_INIT = ('modulation', 'final_modulation', 'final')  # adaLN-Zero
_SMALL_NORMAL = ('time_fc1', 'time_fc2')  # std 0.02, as DiT's timestep MLP


def dit_init(module: DiT, seed: int) -> None:
  """DiT's initialisation, drawn on the host with numpy: Xavier-uniform kernels and
  zero biases, except the adaLN modulations and the output layer (zeros: each
  block starts as the identity and the output as 0) and the time MLP, the class
  and null embeddings (normal, std 0.02)."""
  for index, (path, layer) in enumerate(nnx.iter_modules(module)):
    rng = np.random.default_rng([seed, index])
    name = path[-1] if path else None
    if isinstance(layer, nnx.Linear):
      fan_in, fan_out = layer.kernel.shape
      if name in _ZERO_INIT:
        kernel = np.zeros((fan_in, fan_out))
      elif name in _SMALL_NORMAL:
        kernel = 0.02 * rng.standard_normal((fan_in, fan_out))
      else:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-bound, bound, (fan_in, fan_out))
      layer.kernel.set_value(jnp.asarray(kernel, jnp.float32))
      if layer.bias is not None:
        layer.bias.set_value(jnp.zeros(layer.bias.shape, jnp.float32))
    elif isinstance(layer, nnx.Embed):
      layer.embedding.set_value(
        jnp.asarray(0.02 * rng.standard_normal(layer.embedding.shape), jnp.float32)
      )
  if module.null_cond_emb is not None:
    rng = np.random.default_rng([seed, 1 << 20])
    module.null_cond_emb.set_value(
      jnp.asarray(0.02 * rng.standard_normal(module.null_cond_emb.shape), jnp.float32)
    )
