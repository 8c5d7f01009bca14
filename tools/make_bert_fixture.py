"""Writes the Hugging Face parity fixture of tests/test_text.py.

Optional tool, never needed by the package or its tests. Set-up (CPU torch), from
the repository root:

  pip install torch==2.13.0 transformers==5.24.0
  python tools/make_bert_fixture.py

Writes tests/fixtures/tiny_bert/ (a tiny random BERT from write_random_bert) and
tests/fixtures/tiny_bert_outputs.npz: the sentences, their token ids and mask,
and transformers' BertModel outputs pooled as video-diffusion-pytorch's
bert_embed ('mean': masked mean after [CLS]; 'cls': the [CLS] state).
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import tokenizers
import torch
import transformers

from video_diffusion.conditions.text import write_random_bert

ROOT = pathlib.Path(__file__).resolve().parent.parent

FIXTURES = ROOT / 'tests' / 'fixtures'
MAX_LENGTH = 16
WORDS = (
  'a the cat dog sat ran on under mat table red blue small big and quickly '
  'moving digit one two three . ,'
).split()
SENTENCES = [
  'the cat sat on the mat .',
  'a small red dog',
  'two digits moving quickly under a big blue table , and the cat ran .',
  'one',
  'the dog sat on a mat and the cat sat on the table and one two three ran',
]


def main():
  folder = FIXTURES / 'tiny_bert'
  shutil.rmtree(folder, ignore_errors=True)
  write_random_bert(
    str(folder),
    words=WORDS,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=MAX_LENGTH,
    seed=0,
  )
  tokenizer = tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))
  tokenizer.enable_truncation(MAX_LENGTH)
  tokenizer.enable_padding(pad_id=0, pad_token='[PAD]')  # to the longest: not MAX_LENGTH
  encodings = tokenizer.encode_batch(SENTENCES)
  ids = torch.tensor([e.ids for e in encodings])
  mask = torch.tensor([e.attention_mask for e in encodings])
  model, info = transformers.BertModel.from_pretrained(
    str(folder), add_pooling_layer=False, output_loading_info=True
  )
  assert not any(info.values()), info  # every weight read, none left at random
  model.eval()
  with torch.no_grad():
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
  keep = (ids != 0)[:, 1:, None].to(hidden.dtype)  # bert_embed: mask = ids != pad_id
  mean = (hidden[:, 1:] * keep).sum(dim=1) / (keep.sum(dim=1) + 1e-8)
  np.savez(
    FIXTURES / 'tiny_bert_outputs.npz',
    sentences=np.array(SENTENCES),
    ids=ids.numpy().astype(np.int32),
    mask=mask.numpy().astype(np.int32),
    mean=mean.numpy(),
    cls=hidden[:, 0].numpy(),
  )
  print(
    f'wrote {folder} and tiny_bert_outputs.npz with torch {torch.__version__}, '
    f'transformers {transformers.__version__}'
  )


if __name__ == '__main__':
  main()
