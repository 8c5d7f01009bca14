"""Rewrite the config key table of docs/configuration.md from the schema.

  python tools/update_config_docs.py          # or: make config-docs
  python tools/update_config_docs.py --check  # exit status 1 if the table is out of date

The table between the markers `<!-- config-table:start -->` and
`<!-- config-table:end -->` is `video_diffusion.config.markdown_table()`;
tests/test_docs.py fails while the page differs from it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

PAGE = pathlib.Path(__file__).resolve().parent.parent / 'docs' / 'configuration.md'
START = '<!-- config-table:start -->\n'
END = '<!-- config-table:end -->'


def with_table(text: str, table: str) -> str:
  """`text` with the part between the markers replaced by `table`."""
  head, start, rest = text.partition(START)
  _, end, tail = rest.partition(END)
  if not start or not end:
    raise ValueError(f'{PAGE} lacks the markers {START.strip()} and {END}')
  return f'{head}{START}{table}\n{END}{tail}'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='only check; exit 1 if out of date')
  args = parser.parse_args()
  sys.path.insert(0, str(PAGE.parent.parent))
  from video_diffusion.config import markdown_table

  text = PAGE.read_text()
  new = with_table(text, markdown_table())
  if args.check:
    if new != text:
      print(f'{PAGE} is out of date: run python tools/update_config_docs.py', file=sys.stderr)
      return 1
    return 0
  if new != text:
    PAGE.write_text(new)
    print(f'updated {PAGE}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
