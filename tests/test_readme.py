"""The README's usage snippets run (shrunk to tiny sizes) and do what they say."""

import pathlib
import re
import shutil

import pytest

pytestmark = pytest.mark.slow  # runs every README snippet; left out of `make test-fast`

README = pathlib.Path(__file__).parent.parent / 'README.md'
# Same code, small enough for CI: (pattern, replacement) applied to the snippets.
SHRINK = [
  (r'\bdim=64', 'dim=8'),
  (r'dim_mults=\(1, 2, 4, 8\)', 'dim_mults=(1, 2)'),
  (r'image_size=32', 'image_size=8'),
  (r'32, 32', '8, 8'),
  (r'timesteps=1000', 'timesteps=3'),
  (r'\(4, 5, 32, 32, 3\)', '(4, 5, 8, 8, 3)'),
]


def usage_snippets():
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)
  return [b for b in blocks if 'convert_reference_checkpoint' not in b]


def test_usage_snippets_run(tmp_path):
  code = '\n'.join(usage_snippets())
  for pattern, replacement in SHRINK:
    code = re.sub(pattern, replacement, code)
  namespace = {}
  exec(compile(code, str(README), 'exec'), namespace)
  assert namespace['sampled_videos'].shape == (2, 5, 8, 8, 3)
  assert float(namespace['sampled_videos'].min()) >= 0.0
  assert float(namespace['sampled_videos'].max()) <= 1.0
  assert namespace['loss'].shape == ()


def test_checkpoint_snippet_runs(tmp_path, monkeypatch):
  block = next(
    b
    for b in re.findall(r'```python\n(.*?)```', README.read_text(), re.S)
    if 'convert_reference_checkpoint' in b
  )
  fixture = pathlib.Path(__file__).parent / 'fixtures' / 'reference_checkpoint.pt'
  (tmp_path / 'results').mkdir()
  shutil.copy(fixture, tmp_path / 'results' / 'model-10.pt')
  monkeypatch.chdir(tmp_path)
  # The fixture's model: dim 4, mults (1, 2), 1 channel, 1 head of width 8.
  code = block.replace(
    'dim=64, dim_mults=(1, 2, 4, 8), channels=3',
    'dim=4, dim_mults=(1, 2), channels=1, attn_heads=1, attn_dim_head=8',
  )
  namespace = {}
  exec(code, namespace)
  assert namespace['converted'].step == 1234


def test_readme_starts_with_the_demo_and_test_commands_and_ci_runs_the_latter():
  first_block = re.search(r'```bash\n(.*?)```', README.read_text(), re.S).group(1)
  commands = [line.split('#')[0].strip() for line in first_block.splitlines()]
  assert commands[:2] == ['make demo', 'make test']
  ci = (README.parent / '.ci' / 'run').read_text()
  assert 'make test' in ci.split('\n', 2)[-1]


def test_readme_documents_every_flag_and_config_key():
  from video_diffusion.cli import eval_parser, prepare_parser, sample_parser, train_parser
  from video_diffusion.config import markdown_table

  text = README.read_text()
  assert markdown_table() in text
  for parser in (train_parser(), sample_parser(), eval_parser(), prepare_parser()):
    for action in parser._actions:
      if action.option_strings and action.dest != 'help':
        assert f'`{action.option_strings[0]}' in text, action.option_strings[0]
