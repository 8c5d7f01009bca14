"""The package's shape: subpackages by stage, imports one way, no import circles."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'video_diffusion'

# Each stage may import its own modules and those of the stages before it.
STAGES = [
  'runtime',
  'config',
  'models',
  'diffusion',
  'conditions',
  'data',
  'parallel',
  'checkpointing',
  'reporting',
  'vae',
  'inference',
  'eval',
  'train',
  'interop',
  'cli',
]
# Modules that must not import JAX (grain workers, `--help`, the allocator re-exec).
JAX_FREE = ['runtime', 'config', 'conditions.kinds', 'data', 'reporting']
HEAVY = {'jax', 'flax', 'optax', 'orbax'}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _nodes(tree: ast.AST, top_level: bool):
  """Every node, or with top_level only those run at import (not in a function)."""
  todo = [tree]
  while todo:
    node = todo.pop()
    yield node
    if top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      continue
    todo += ast.iter_child_nodes(node)


def imports_of(path: pathlib.Path, modules: set[str], top_level: bool = False) -> set[str]:
  """The modules of `modules` a file imports (in functions too unless top_level):
  `from pkg import submodule` counts as the submodule."""
  found = set()
  for node in _nodes(ast.parse(path.read_text()), top_level):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      subs = [f'{node.module}.{alias.name}' for alias in node.names]
      names = [n for n in subs if n in modules] or [node.module]
    else:
      continue
    found |= {name.split('.')[0] if name.split('.')[0] in HEAVY else name for name in names}
  return found & modules


def import_graph(top_level: bool = False) -> dict[str, set[str]]:
  """module -> the package modules (and heavy libraries) it imports; a module's
  import of its own package's __init__ (which Python has already begun) is left out."""
  paths = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  modules = set(paths) | HEAVY
  return {
    name: {m for m in imports_of(path, modules, top_level) if not name.startswith(m + '.')}
    for name, path in paths.items()
  }


def stage(module: str) -> str | None:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_there_is_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, ' -> '.join(cycle)


def test_the_cycle_finder_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_imports_flow_from_earlier_stages_to_later_ones():
  order = {name: i for i, name in enumerate(STAGES)}
  upward = []
  for module, imported in import_graph().items():
    for target in imported:
      here, there = stage(module), stage(target)
      if here in order and there in order and order[there] > order[here]:
        upward.append(f'{module} imports {target}')
  assert not upward, '\n'.join(sorted(upward))


def test_every_module_belongs_to_a_stage():
  loose = [
    m
    for m in import_graph()
    if m.count('.') >= 1 and stage(m) not in STAGES and stage(m) not in ('__main__',)
  ]
  assert not loose


@pytest.mark.parametrize('prefix', JAX_FREE)
def test_light_modules_do_not_import_jax(prefix):
  graph = import_graph(top_level=True)
  start = [
    m
    for m in graph
    if m == f'video_diffusion.{prefix}' or m.startswith(f'video_diffusion.{prefix}.')
  ]
  seen, todo = set(), list(start)
  while todo:
    module = todo.pop()
    if module in seen:
      continue
    seen.add(module)
    todo += graph.get(module, ())
  heavy = sorted(seen & HEAVY)
  assert not heavy, f'{prefix} reaches {heavy}'
