"""The README and the docs site: short README, no stale paths, every page in the
nav, every config key and command-line flag documented."""

import importlib.util
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
# Folders a run, a build or the set-up writes: paths into them need not exist.
OUTPUTS = ('results/', 'data/', 'site/', 'build/', '.venv/', 'checkpoints/', 'samples/')
# Bare file names (no folder) with these suffixes are looked up anywhere in the repo;
# others (grid.gif, manifest.json) are the names of files a command writes.
SOURCE_SUFFIXES = ('.py', '.yaml', '.toml', '.md', '.npz')
TOP = {p.name for p in ROOT.iterdir()}


def markdown_files() -> list[pathlib.Path]:
  """Every Markdown file but those in hidden folders (.venv, .pytest_cache) and outputs."""
  skip = lambda part: part.startswith('.') or part in ('site', 'build', 'results')
  return sorted(p for p in ROOT.rglob('*.md') if not any(map(skip, p.relative_to(ROOT).parts[:-1])))


def backticked_paths(text: str) -> list[str]:
  """Inline-code spans outside fenced blocks that look like repo paths."""
  text = re.sub(r'```.*?```', '', text, flags=re.S)
  spans = re.findall(r'`([^`\n]+)`', text)
  paths = []
  for span in spans:
    if span.startswith(('/', '~', '-')) or re.search(r'[\s=*<>{}$|:\[\]()]', span):
      continue  # an absolute or home path, a flag, a command, a glob, a URL, a template
    if span.startswith('.') and '/' not in span:
      continue  # a suffix: `.npy`, `.gif`
    if any(part.split('.')[0].isupper() for part in span.split('/')):
      continue  # a placeholder: DIR, PATH, FILE.npy, DIR/N.damaged
    rooted = '/' in span and span.split('/')[0] in TOP  # not a tag like `train/loss`
    if rooted or span.endswith(SOURCE_SUFFIXES + ('/',)):
      paths.append(span.removeprefix('./'))
  return paths


def missing_paths(page: pathlib.Path) -> list[str]:
  """Backticked paths of `page` found neither from the repo root, nor beside the
  page, nor in the package (the layout table names `models/` for
  video_diffusion/models/), nor (bare names) anywhere in the repo."""
  missing = []
  for path in backticked_paths(page.read_text()):
    if (path + '/').startswith(OUTPUTS):
      continue
    bases = (ROOT, page.parent, ROOT / 'video_diffusion')
    if any((base / path).exists() for base in bases):
      continue
    if '/' not in path and path.endswith(SOURCE_SUFFIXES) and next(ROOT.rglob(path), None):
      continue
    missing.append(path)
  return missing


def test_readme_is_short_and_undated():
  text = README.read_text()
  assert len(text.splitlines()) <= 300
  assert not re.findall(r'20[0-9][0-9]-', text), 'dated measurements belong in docs/results.md'


@pytest.mark.parametrize('page', markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_backticked_paths_exist(page):
  missing = missing_paths(page)
  assert not missing, f'{page.relative_to(ROOT)} names paths that do not exist: {missing}'


def test_a_wrong_path_is_caught(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text(
    'See `tests/test_nonexistent.py`, `tests/test_readme.py`, `results/demo/grid.gif`,\n'
    '`--config PATH`, `DIR/N.damaged`, `grid.gif`, `config_v2_2.yaml` and `nope.yaml`.\n'
    '```bash\npython missing/script.py\n```\n'
  )
  assert missing_paths(page) == ['tests/test_nonexistent.py', 'nope.yaml']
  page.write_text('`tests/test_readme.py` and `tests/test_readme.py.orig`')
  assert missing_paths(page) == ['tests/test_readme.py.orig']


def test_every_docs_page_is_in_the_nav():
  config = yaml.load((ROOT / 'mkdocs.yml').read_text(), Loader=yaml.BaseLoader)

  def pages(nav):
    for item in nav:
      value = next(iter(item.values())) if isinstance(item, dict) else item
      yield from pages(value) if isinstance(value, list) else [value]

  listed = set(pages(config['nav']))
  on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob('*.md')}
  assert on_disk - listed == set(), 'pages missing from the nav of mkdocs.yml'
  assert listed - on_disk == set(), 'nav entries without a page'


def test_the_config_table_is_up_to_date():
  from video_diffusion.config import markdown_table

  spec = importlib.util.spec_from_file_location('tool', ROOT / 'tools' / 'update_config_docs.py')
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  text = (DOCS / 'configuration.md').read_text()
  assert markdown_table() in text
  assert tool.with_table(text, markdown_table()) == text, 'run make config-docs'


def test_the_command_line_page_documents_every_flag():
  from video_diffusion.cli import COMMANDS

  text = (DOCS / 'cli.md').read_text()
  for name, (make_parser, _) in COMMANDS.items():
    assert f'## {name}' in text, name
    for action in make_parser()._actions:
      if action.option_strings and action.dest != 'help':
        assert f'`{action.option_strings[0]}' in text, (name, action.option_strings[0])
