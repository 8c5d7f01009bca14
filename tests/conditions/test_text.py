"""Text encoder: BERT in Flax NNX loaded from a local Hugging Face folder."""

import json
import os
import shutil
import struct

import numpy as np
import pytest
from conftest import FIXTURES

from video_diffusion.conditions.text import (
  TextEncoder,
  TextEncoderError,
  read_safetensors,
  write_random_bert,
  write_safetensors,
)

pytestmark = pytest.mark.optimized  # compiled as users' runs are (tests/conftest.py)

WORDS = 'a the cat dog sat on mat red blue small big and .'.split()
MAX_LENGTH = 8


@pytest.fixture(scope='module')
def bert_dir(tmp_path_factory):
  return write_random_bert(str(tmp_path_factory.mktemp('bert')), words=WORDS)


@pytest.fixture(scope='module')
def encoder(bert_dir):
  return TextEncoder.from_pretrained(bert_dir, max_length=MAX_LENGTH)


def _vocab(name):
  return 5 + WORDS.index(name)  # after [PAD] [UNK] [CLS] [SEP] [MASK]


def test_tokenize_adds_cls_sep_pads_and_maps_unknown_words(encoder):
  ids, mask = encoder.tokenize(['the cat zebra', 'dog'])
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (2, MAX_LENGTH)
  np.testing.assert_array_equal(ids[0], [2, _vocab('the'), _vocab('cat'), 1, 3, 0, 0, 0])
  np.testing.assert_array_equal(mask, [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5])


def test_truncation_to_max_length_keeps_cls_and_sep(encoder):
  ids, mask = encoder.tokenize([' '.join(WORDS)])
  np.testing.assert_array_equal(ids[0], [2] + [_vocab(w) for w in WORDS[: MAX_LENGTH - 2]] + [3])
  assert mask.all()


def test_output_shape_dtype_and_determinism(encoder, bert_dir):
  texts = ['a red cat', 'the dog sat on the mat', 'big']
  out = encoder(texts)
  assert encoder.hidden_size == 32
  assert out.shape == (3, 32) and out.dtype == np.float32 and np.isfinite(out).all()
  np.testing.assert_array_equal(encoder(texts), out)
  np.testing.assert_array_equal(
    TextEncoder.from_pretrained(bert_dir, max_length=MAX_LENGTH)(texts), out
  )
  assert encoder([]).shape == (0, 32)


def test_padding_does_not_change_the_embedding(encoder, bert_dir):
  short, long = 'the cat', 'a big blue dog sat on the red mat'
  alone = encoder([short])[0]
  np.testing.assert_allclose(encoder([short, long])[0], alone, atol=1e-6)
  assert np.abs(encoder([long])[0] - alone).max() > 1e-2
  cls = TextEncoder.from_pretrained(bert_dir, pooling='cls', max_length=MAX_LENGTH)
  np.testing.assert_allclose(cls([short, long])[0], cls([short])[0], atol=1e-6)
  assert np.abs(cls([short])[0] - alone).max() > 1e-2


def test_matches_transformers_bert_model():
  """tests/fixtures/tiny_bert* were written by tools/make_bert_fixture.py with torch."""
  with np.load(FIXTURES / 'tiny_bert_outputs.npz') as data:
    golden = {k: data[k] for k in data.files}
  sentences = [str(s) for s in golden['sentences']]
  for pooling in ('mean', 'cls'):
    encoder = TextEncoder.from_pretrained(FIXTURES / 'tiny_bert', pooling=pooling, max_length=16)
    ids, mask = encoder.tokenize(sentences)
    n = golden['ids'].shape[1]
    np.testing.assert_array_equal(ids[:, :n], golden['ids'])
    np.testing.assert_array_equal(mask[:, :n], golden['mask'])
    np.testing.assert_allclose(encoder(sentences), golden[pooling], rtol=0, atol=1e-5)


def _copy(bert_dir, tmp_path):
  return shutil.copytree(bert_dir, tmp_path / 'bert')


def test_reads_masked_lm_names_and_ignores_heads(encoder, bert_dir, tmp_path):
  folder = _copy(bert_dir, tmp_path)
  path = str(folder / 'model.safetensors')
  tensors = read_safetensors(path)
  renamed = {
    'bert.'
    + k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace(
      'LayerNorm.bias', 'LayerNorm.beta'
    ): v
    for k, v in tensors.items()
  }
  renamed['cls.predictions.bias'] = np.zeros(len(WORDS) + 5, np.float32)
  renamed['bert.pooler.dense.weight'] = np.ones((32, 32), np.float32)
  write_safetensors(path, renamed)
  texts = ['the red dog', 'a cat']
  got = TextEncoder.from_pretrained(folder, max_length=MAX_LENGTH)(texts)
  np.testing.assert_array_equal(got, encoder(texts))


def test_safetensors_half_precision(tmp_path):
  values = np.array([[1.5, -2.0], [0.15625, 24576.0]], np.float32)
  write_safetensors(str(tmp_path / 'f16.safetensors'), {'x': values.astype(np.float16)})
  np.testing.assert_array_equal(read_safetensors(str(tmp_path / 'f16.safetensors'))['x'], values)
  bf16 = (values.view(np.uint32) >> 16).astype('<u2').tobytes()  # exact in bfloat16
  header = json.dumps({'x': {'dtype': 'BF16', 'shape': [2, 2], 'data_offsets': [0, 8]}}).encode()
  (tmp_path / 'bf16.safetensors').write_bytes(struct.pack('<Q', len(header)) + header + bf16)
  out = read_safetensors(str(tmp_path / 'bf16.safetensors'))['x']
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, values)


def test_write_random_bert_is_deterministic(bert_dir, tmp_path):
  again = write_random_bert(str(tmp_path), words=WORDS)
  for name in ('config.json', 'model.safetensors', 'tokenizer.json'):
    assert (tmp_path / name).read_bytes() == open(os.path.join(bert_dir, name), 'rb').read()
  assert json.load(open(os.path.join(again, 'config.json')))['vocab_size'] == len(WORDS) + 5


def _edit_config(folder, **changes):
  config = json.loads((folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps({**config, **changes}))


def test_tanh_gelu_is_accepted(encoder, bert_dir, tmp_path):
  folder = _copy(bert_dir, tmp_path)
  _edit_config(folder, hidden_act='gelu_new')
  out = TextEncoder.from_pretrained(folder, max_length=MAX_LENGTH)(['the cat'])
  np.testing.assert_allclose(out, encoder(['the cat']), atol=1e-2)
  assert not np.array_equal(out, encoder(['the cat']))


def _drop_weight(folder, name='encoder.layer.1.output.dense.bias'):
  path = str(folder / 'model.safetensors')
  tensors = read_safetensors(path)
  del tensors[name]
  write_safetensors(path, tensors)


@pytest.mark.parametrize(
  'breakage, kwargs, match',
  [
    (lambda f: shutil.rmtree(f), {}, r'folder .*bert not found'),
    (lambda f: os.remove(f / 'tokenizer.json'), {}, r'tokenizer\.json not found'),
    (lambda f: os.remove(f / 'config.json'), {}, r'config\.json not found'),
    (
      lambda f: (f / 'model.safetensors').write_bytes(b'garbage'),
      {},
      r'model\.safetensors is not a safetensors file',
    ),
    (_drop_weight, {}, r"weight 'encoder\.layer\.1\.output\.dense\.bias' is missing"),
    (lambda f: _edit_config(f, model_type='gpt2'), {}, r"model_type is 'gpt2'.*BERT"),
    (lambda f: _edit_config(f, hidden_act='relu'), {}, r"hidden_act 'relu'.*gelu"),
    (lambda f: _edit_config(f, hidden_size=48), {}, r"'embeddings.LayerNorm.bias' has shape"),
    (lambda f: None, {'pooling': 'max'}, r"pooling must be one of \('mean', 'cls'\)"),
    (lambda f: None, {'max_length': 65}, r'max_length must be in \[2, max_position_embeddings'),
  ],
  ids=[
    'no-folder',
    'no-tokenizer',
    'no-config',
    'bad-weights',
    'no-weight',
    'model-type',
    'activation',
    'shape',
    'pooling',
    'max-length',
  ],
)
def test_errors_name_the_problem(bert_dir, tmp_path, breakage, kwargs, match):
  folder = _copy(bert_dir, tmp_path)
  breakage(folder)
  with pytest.raises(TextEncoderError, match=match):
    TextEncoder.from_pretrained(folder, **kwargs)
  assert issubclass(TextEncoderError, ValueError)
