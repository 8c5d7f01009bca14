"""The Python snippets of the README and the docs run (shrunk to tiny sizes) and do
what they say; the README starts with the demo and test commands."""

import dataclasses
import pathlib
import re
import shutil

import pytest

pytestmark = pytest.mark.slow  # runs every snippet; left out of `make test-fast`

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / 'README.md'
GETTING_STARTED = ROOT / 'docs' / 'getting-started.md'
CHECKPOINTS = ROOT / 'docs' / 'pytorch-checkpoints.md'
# The demo config, shrunk (the README's example reads it through load_config).
TINY = ['unet.dim=8', 'unet.dim_mults=[1,2]', 'diffusion.image_size=8']
# Same code, small enough for CI: (pattern, replacement) applied to the snippets.
SHRINK = [
  (r'\bdim=64', 'dim=8'),
  (r'dim_mults=\(1, 2, 4, 8\)', 'dim_mults=(1, 2)'),
  (r'image_size=32', 'image_size=8'),
  (r'32, 32', '8, 8'),
  (r'timesteps=1000', 'timesteps=3'),
  (r'\(4, 5, 32, 32, 3\)', '(4, 5, 8, 8, 3)'),
  (r"load_config\('configs/config.yaml', \[", 'load_config(CONFIG, TINY + ['),
  (r'steps=20', 'steps=2'),
]


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r'```python\n(.*?)```', page.read_text(), re.S)


def run_shrunk(blocks: list[str], page: pathlib.Path) -> dict:
  code = '\n'.join(blocks)
  for pattern, replacement in SHRINK:
    code = re.sub(pattern, replacement, code)
  namespace = {'CONFIG': str(ROOT / 'configs' / 'config.yaml'), 'TINY': TINY}
  exec(compile(code, str(page), 'exec'), namespace)
  return namespace


def test_readme_example_runs():
  """Config -> model -> loss -> samples, as the README's Python section shows."""
  blocks = python_blocks(README)
  assert len(blocks) == 2, 'a pixel and a latent example'
  for block in blocks:
    assert len([line for line in block.splitlines() if line.strip()]) <= 10, 'short examples'
  namespace = run_shrunk(blocks[:1], README)
  assert namespace['samples'].shape == (2, 8, 8, 8, 1)
  assert 0.0 <= float(namespace['samples'].min()) <= float(namespace['samples'].max()) <= 1.0
  assert namespace['loss'].shape == ()


def test_readme_latent_example_samples_a_latent_checkpoint(tmp_path, monkeypatch):
  """The README's second example, on a tiny latent run (16x16x5 videos, 2x2x2x4 latents)."""
  from conftest import latent_config

  from video_diffusion.train import loop as trainer

  folder = tmp_path / 'results' / 'demo-latent'
  cfg = latent_config(folder, ROOT / 'tests' / 'fixtures' / 'vae' / 'wan_like')
  cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, train_num_steps=1))
  trainer.train(cfg)
  monkeypatch.chdir(tmp_path)
  namespace = run_shrunk(python_blocks(README)[1:], README)
  assert namespace['step'] == 1 and namespace['videos'].shape == (4, 5, 16, 16, 3)
  assert len(list((folder / 'from-python').glob('sample_*.gif'))) == 4


def test_getting_started_snippets_run():
  """The reference README's three snippets, in JAX (docs/getting-started.md)."""
  namespace = run_shrunk(python_blocks(GETTING_STARTED), GETTING_STARTED)
  assert namespace['sampled_videos'].shape == (2, 5, 8, 8, 3)
  assert float(namespace['sampled_videos'].min()) >= 0.0
  assert float(namespace['sampled_videos'].max()) <= 1.0
  assert namespace['loss'].shape == ()


def test_checkpoint_snippet_runs(tmp_path, monkeypatch):
  (block,) = [b for b in python_blocks(CHECKPOINTS) if 'convert_reference_checkpoint' in b]
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
  ci = (ROOT / '.ci' / 'run').read_text()
  assert 'make test' in ci.split('\n', 2)[-1]
