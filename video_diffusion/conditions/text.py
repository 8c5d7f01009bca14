"""Text conditioning: a BERT encoder loaded from a local Hugging Face folder.

The folder holds config.json, model.safetensors and tokenizer.json, as written by
transformers' `save_pretrained` (or by `write_random_bert`); nothing is downloaded.
Tokenising uses the `tokenizers` package, the network is `video_diffusion.models.bert`, and
safetensors files are read and written here with numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import struct
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from video_diffusion.models.bert import (
  ACTIVATIONS,
  POOLINGS,
  BertConfig,
  abstract_encoder,
  hf_params,
  pool,
)

_SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
_FOLDER_FIX = (
  'a Hugging Face model folder holds config.json, model.safetensors and '
  'tokenizer.json (model.save_pretrained(folder) and '
  'tokenizer.save_pretrained(folder) in transformers write them)'
)


class TextEncoderError(ValueError):
  """A text-encoder folder, file or setting that cannot be used; says how to fix it."""


# ---------------------------------------------------------------------------- safetensors

_DTYPES = {'F32': '<f4', 'F16': '<f2', 'BF16': '<u2'}


def _header(path: str) -> tuple[int, dict]:
  """(header length, header without __metadata__) of a .safetensors file."""
  try:
    with open(path, 'rb') as fh:
      (length,) = struct.unpack('<Q', fh.read(8))
      header = json.loads(fh.read(length))
  except (struct.error, ValueError) as e:
    raise TextEncoderError(f'{path} is not a safetensors file ({e}); {_FOLDER_FIX}') from e
  header.pop('__metadata__', None)
  return length, header


def safetensors_names(path: str) -> list[str]:
  """The tensor names in a .safetensors file."""
  return list(_header(path)[1])


def read_safetensors(path: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file (only `names` when given) as float32 arrays."""
  length, header = _header(path)
  data = np.memmap(path, dtype=np.uint8, mode='r')
  out = {}
  for name in header if names is None else names:
    info = header[name]
    if info['dtype'] not in _DTYPES:
      raise TextEncoderError(
        f'{path}: tensor {name!r} has dtype {info["dtype"]}; supported: '
        f'{", ".join(_DTYPES)} (convert the checkpoint to float32)'
      )
    start, end = (8 + length + o for o in info['data_offsets'])
    raw = np.frombuffer(data[start:end].tobytes(), _DTYPES[info['dtype']])
    if raw.size != int(np.prod(info['shape'])):
      raise TextEncoderError(
        f'{path}: tensor {name!r} holds {raw.size} values, not shape '
        f'{info["shape"]}; the file is damaged'
      )
    if info['dtype'] == 'BF16':
      raw = (raw.astype(np.uint32) << 16).view(np.float32)
    out[name] = raw.astype(np.float32).reshape(info['shape'])
  return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> str:
  """Writes float32/float16 arrays as a .safetensors file (torch's row-major layout)."""
  kinds = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16'}
  header, chunks, offset = {}, [], 0
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    blob = array.astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {
      'dtype': kinds[array.dtype],
      'shape': list(array.shape),
      'data_offsets': [offset, offset + len(blob)],
    }
    chunks.append(blob)
    offset += len(blob)
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # the data starts 8-byte aligned
  with open(path, 'wb') as fh:
    fh.write(struct.pack('<Q', len(text)) + text + b''.join(chunks))
  return path


# ---------------------------------------------------------------------------- loading


def _require(folder: str, name: str) -> str:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise TextEncoderError(f'{path} not found; {_FOLDER_FIX}')
  return path


def _read_config(path: str) -> dict:
  with open(path, encoding='utf-8') as fh:
    try:
      return json.load(fh)
    except ValueError as e:
      raise TextEncoderError(f'{path} is not valid JSON ({e})') from e


def load_bert_config(path: str) -> BertConfig:
  """The BertConfig of a Hugging Face config.json; rejects what the encoder cannot run."""
  raw = _read_config(path)
  fields = BertConfig.__dataclass_fields__
  required = ['model_type'] + [k for k, f in fields.items() if f.default is dataclasses.MISSING]
  for key in required:
    if key not in raw:
      raise TextEncoderError(
        f'{path}: key {key!r} is missing; the file must be a BertConfig as transformers writes it'
      )
  if raw['model_type'] != 'bert':
    raise TextEncoderError(
      f'{path}: model_type is {raw["model_type"]!r}; only BERT '
      "checkpoints (model_type 'bert') are supported"
    )
  if raw.get('position_embedding_type', 'absolute') != 'absolute':
    raise TextEncoderError(
      f'{path}: position_embedding_type is '
      f"{raw['position_embedding_type']!r}; only 'absolute' is supported"
    )
  if raw.get('hidden_act', 'gelu') not in ACTIVATIONS:
    raise TextEncoderError(
      f'{path}: hidden_act {raw["hidden_act"]!r} is not supported; '
      f'use one of {", ".join(ACTIVATIONS)}'
    )
  cfg = BertConfig(**{k: raw[k] for k in fields if k in raw})
  if cfg.hidden_size % cfg.num_attention_heads:
    raise TextEncoderError(
      f'{path}: hidden_size {cfg.hidden_size} is not a multiple of '
      f'num_attention_heads {cfg.num_attention_heads}'
    )
  return cfg


def _hf_key(name: str) -> str:
  """BertModel name of a checkpoint tensor name ('bert.' prefix, old gamma/beta names)."""
  name = name.removeprefix('bert.')
  if name.endswith('LayerNorm.gamma') or name.endswith('LayerNorm.beta'):
    name = name.rsplit('.', 1)[0] + ('.weight' if name.endswith('gamma') else '.bias')
  return name


def load_weights(model: nnx.Module, path: str) -> None:
  """Fills the (abstract) BertEncoder `model` with the weights of a .safetensors file."""
  available = {_hf_key(name): name for name in safetensors_names(path)}
  params = hf_params(model)
  missing = [name for name in params if name not in available]
  if missing:
    raise TextEncoderError(
      f'{path}: weight {missing[0]!r} is missing ({len(missing)} missing '
      'in all); the file must hold a BertModel or BertForMaskedLM state dict'
    )
  arrays = read_safetensors(path, [available[name] for name in params])
  for name, (var, transposed) in params.items():
    value = arrays[available[name]]
    expected = var.shape[::-1] if transposed else var.shape
    if value.shape != expected:
      raise TextEncoderError(
        f'{path}: weight {name!r} has shape {value.shape} but config.json '
        f'implies {expected}; the config does not match the weights'
      )
    var.set_value(jnp.asarray(value.T if transposed else value))


def _embed(graphdef, pooling, state, ids, mask):
  return pool(nnx.merge(graphdef, state)(ids, mask), mask, pooling)


class TextEncoder:
  """Texts -> (n, hidden_size) float32 embeddings with a BERT encoder and its tokenizer."""

  def __init__(
    self,
    config: BertConfig,
    model: nnx.Module,
    tokenizer,
    *,
    pooling: str = 'mean',
    max_length: int = 64,
    pad_id: int = 0,
  ):
    if pooling not in POOLINGS:
      raise TextEncoderError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    if not 2 <= max_length <= config.max_position_embeddings:
      raise TextEncoderError(
        f'max_length must be in [2, max_position_embeddings = '
        f'{config.max_position_embeddings}], got {max_length}'
      )
    self.config = config
    self.hidden_size = config.hidden_size
    self.pooling = pooling
    self.max_length = max_length
    self.tokenizer = tokenizer
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(
      length=max_length, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or '[PAD]'
    )
    graphdef, self.state = nnx.split(model)
    self._embed = jax.jit(functools.partial(_embed, graphdef, pooling))

  @classmethod
  def from_pretrained(
    cls, folder: str, *, pooling: str = 'mean', max_length: int = 64
  ) -> TextEncoder:
    """Loads config.json, model.safetensors and tokenizer.json from a local folder."""
    import tokenizers

    if pooling not in POOLINGS:
      raise TextEncoderError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
      raise TextEncoderError(f'text encoder folder {folder} not found; {_FOLDER_FIX}')
    config_path = _require(folder, 'config.json')
    weights_path = _require(folder, 'model.safetensors')
    tokenizer_path = _require(folder, 'tokenizer.json')
    config = load_bert_config(config_path)
    try:
      tokenizer = tokenizers.Tokenizer.from_file(tokenizer_path)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
      raise TextEncoderError(
        f'{tokenizer_path} is not a tokenizers file ({e}); {_FOLDER_FIX}'
      ) from e
    if tokenizer.get_vocab_size() > config.vocab_size:
      raise TextEncoderError(
        f'{tokenizer_path} has {tokenizer.get_vocab_size()} tokens, more '
        f'than vocab_size {config.vocab_size} in {config_path}'
      )
    model = abstract_encoder(config)
    load_weights(model, weights_path)
    pad_id = _read_config(config_path).get('pad_token_id') or 0
    return cls(config, model, tokenizer, pooling=pooling, max_length=max_length, pad_id=pad_id)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """int32 token ids and attention mask (n, max_length): [CLS] ... [SEP], truncated
    and padded to max_length. A single string counts as one text."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    encodings = self.tokenizer.encode_batch(texts)
    shape = (len(texts), self.max_length)
    ids = np.array([e.ids for e in encodings], np.int32).reshape(shape)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(shape)
    return ids, mask

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """float32 (n, hidden_size) embeddings; one compiled forward per batch size."""
    ids, mask = self.tokenize(texts)
    if not len(ids):
      return np.zeros((0, self.hidden_size), np.float32)
    return np.asarray(self._embed(self.state, ids, mask), np.float32)


# ---------------------------------------------------------------------------- random model


def _word_piece_tokenizer(vocab: Mapping[str, int]):
  """A cased BERT WordPiece tokenizer adding [CLS] ... [SEP]."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  tokenizer = Tokenizer(models.WordPiece(dict(vocab), unk_token='[UNK]'))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.post_processor = processors.TemplateProcessing(
    single='[CLS] $A [SEP]',
    pair='[CLS] $A [SEP] $B:1 [SEP]:1',
    special_tokens=[('[CLS]', vocab['[CLS]']), ('[SEP]', vocab['[SEP]'])],
  )
  tokenizer.decoder = decoders.WordPiece()
  tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
  return tokenizer


def write_random_bert(
  folder: str,
  *,
  words: Sequence[str],
  hidden_size: int = 32,
  num_layers: int = 2,
  num_heads: int = 2,
  intermediate_size: int = 64,
  max_position_embeddings: int = 64,
  seed: int = 0,
) -> str:
  """Writes a randomly initialised BERT (config.json, model.safetensors, tokenizer.json)
  whose vocabulary is the special tokens and `words`; returns `folder`.

  Weights are normal with std 0.2 (LayerNorm gains 1 + 0.1 * normal), wider than
  BERT's 0.02 so that attention is far from uniform.
  """
  vocab = {}
  for token in (*_SPECIAL_TOKENS, *words):
    vocab.setdefault(token, len(vocab))
  config = {
    'architectures': ['BertModel'],
    'model_type': 'bert',
    'vocab_size': len(vocab),
    'hidden_size': hidden_size,
    'num_hidden_layers': num_layers,
    'num_attention_heads': num_heads,
    'intermediate_size': intermediate_size,
    'hidden_act': 'gelu',
    'hidden_dropout_prob': 0.1,
    'attention_probs_dropout_prob': 0.1,
    'max_position_embeddings': max_position_embeddings,
    'type_vocab_size': 2,
    'initializer_range': 0.02,
    'layer_norm_eps': 1e-12,
    'pad_token_id': 0,
    'position_embedding_type': 'absolute',
    'use_cache': True,
    'torch_dtype': 'float32',
  }
  model = abstract_encoder(BertConfig(**{k: config[k] for k in BertConfig.__dataclass_fields__}))
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, (var, transposed) in sorted(hf_params(model).items()):
    shape = var.shape[::-1] if transposed else var.shape
    gain = name.endswith('LayerNorm.weight')
    tensors[name] = (
      (1.0 if gain else 0.0) + (0.1 if gain else 0.2) * rng.standard_normal(shape)
    ).astype(np.float32)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as fh:
    json.dump(config, fh, indent=2)
  write_safetensors(os.path.join(folder, 'model.safetensors'), tensors)
  _word_piece_tokenizer(vocab).save(os.path.join(folder, 'tokenizer.json'))
  return folder
