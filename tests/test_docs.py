"""The documentation cannot rot silently: generated tables, links and commands are checked.

README.md and docs/*.md are read as a user reads them: every relative link and image must
resolve (file and, for a Markdown file, heading anchor), every `python -m latentadv.<module>`
and `python benchmarks/<script>.py` command shown must name a module or script that exists and
pass only flags it defines (asked from the program itself with --helpfull), every
`--config.<key>` must name a key of latentadv/base_config.py, and the result tables between
marker comments must be what benchmarks/report.py writes from benchmarks/results/*.json.
"""

import concurrent.futures
import functools
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from latentadv import base_config

DOCUMENTS = ['README.md'] + sorted(
    os.path.relpath(path, REPO_ROOT) for path in glob.glob(os.path.join(REPO_ROOT, 'docs', '*.md')))
NOTEBOOK = os.path.join('notebooks', 'quickstart.ipynb')

_FENCE = re.compile(r'^```.*?^```', re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r'`[^`\n]+`')
_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
_COMMAND = re.compile(r'python3? (?:-m (latentadv(?:\.\w+)+)|(benchmarks/\w+\.py))')
_FLAG = re.compile(r'(?<![\w-])--([A-Za-z_][\w.-]*)')
_HELP_FLAG = re.compile(r'^\s+(?:-\S,)?--(\[no\])?([\w.-]+):')


def _read(path: str) -> str:
  """The Markdown of a document: the file itself, or a notebook's markdown cells."""
  with open(os.path.join(REPO_ROOT, path)) as f:
    if not path.endswith('.ipynb'):
      return f.read()
    cells = json.load(f)['cells']
  return '\n\n'.join(''.join(cell['source']) for cell in cells if cell['cell_type'] == 'markdown')


def _slug(heading: str) -> str:
  """The anchor a code host gives a Markdown heading: lower case, punctuation dropped, spaces
  to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', '')).replace(' ', '-')


@functools.cache
def _anchors(path: str) -> set[str]:
  """The heading anchors of the Markdown file at `path` (relative to the repository root)."""
  text = _FENCE.sub('', _read(path))
  return {_slug(line.lstrip('#')) for line in text.splitlines() if re.match(r'#{1,6} ', line)}


def _links(path: str) -> list[str]:
  """Targets of the Markdown links and images of a document, outside code."""
  text = _INLINE_CODE.sub('', _FENCE.sub('', _read(path)))
  return _LINK.findall(text)


def _link_problem(document: str, target: str) -> str | None:
  """Why `target` (a link in `document`) does not resolve, or None."""
  if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
    return None
  file_part, _, anchor = target.partition('#')
  if file_part:
    base = REPO_ROOT if file_part.startswith('/') else os.path.dirname(
        os.path.join(REPO_ROOT, document))
    resolved = os.path.normpath(os.path.join(base, file_part.lstrip('/')))
  else:
    resolved = os.path.join(REPO_ROOT, document)
  if not os.path.exists(resolved):
    return f'{document}: {target} -> no file {os.path.relpath(resolved, REPO_ROOT)}'
  if anchor and resolved.endswith('.md'):
    if anchor not in _anchors(os.path.relpath(resolved, REPO_ROOT)):
      return f'{document}: {target} -> no heading #{anchor}'
  return None


def test_relative_links_and_images_resolve():
  """Every relative link and image of README.md, docs/*.md and the notebook's prose names an
  existing file (and heading, for a Markdown file)."""
  problems = [problem for document in DOCUMENTS + [NOTEBOOK] for target in _links(document)
              if (problem := _link_problem(document, target))]
  assert not problems, 'Broken links:\n' + '\n'.join(problems)


def _command_texts(document: str) -> list[str]:
  """The shell text of every code block and inline code span of a document, continuation
  lines joined, one entry per line or span."""
  text = _read(document)
  texts = []
  for block in _FENCE.findall(text):
    texts.extend(block.replace('\\\n', ' ').splitlines()[1:-1])
  texts.extend(span.strip('`') for span in _INLINE_CODE.findall(_FENCE.sub('', text)))
  return texts


def _commands() -> list[tuple[str, str, list[str]]]:
  """(document, program, flags) of every latentadv or benchmarks command shown; the program
  is 'latentadv.x' or 'benchmarks/x.py'."""
  found = []
  for document in DOCUMENTS + [NOTEBOOK]:
    for text in _command_texts(document):
      for match in _COMMAND.finditer(text):
        command = re.split(r'&&|\|\||;|\|', text[match.end():])[0]
        found.append((document, match.group(1) or match.group(2), _FLAG.findall(command)))
  return found


def _program_exists(program: str) -> bool:
  if program.startswith('benchmarks/'):
    return os.path.isfile(os.path.join(REPO_ROOT, program))
  path = os.path.join(REPO_ROOT, *program.split('.'))
  return os.path.isfile(path + '.py') or os.path.isfile(os.path.join(path, '__main__.py'))


def _defined_flags(program: str) -> set[str]:
  """The flags `program` defines, from its --helpfull ('[no]x' booleans give x and nox)."""
  command = ([sys.executable, program] if program.endswith('.py')
             else [sys.executable, '-m', program])
  help_text = subprocess.run(command + ['--helpfull'], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=300).stdout
  names = set()
  for line in help_text.split('\nflags:\n', 1)[-1].splitlines():
    if match := _HELP_FLAG.match(line):
      names.add(match.group(2))
      if match.group(1):
        names.add('no' + match.group(2))
  return names


def _config_keys() -> set[str]:
  """Every leaf key of the base config, dotted ('method.eps')."""
  def leaves(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        yield from leaves(value, f'{prefix}{key}.')
      else:
        yield prefix + key
  return set(leaves(base_config.get_config().to_dict(), ''))


def test_commands_name_existing_programs_and_flags():
  """Each command shown runs a module or script that exists, with flags it defines and
  config overrides that name config keys; each --config=FILE names an existing file."""
  commands = _commands()
  assert any(program == 'latentadv.main' for _, program, _ in commands)
  problems = [f'{document}: {program} does not exist' for document, program, _ in commands
              if not _program_exists(program)]
  with_flags = sorted({program for _, program, flags in commands
                       if flags and _program_exists(program)})
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    defined = dict(zip(with_flags, pool.map(_defined_flags, with_flags)))
  keys = _config_keys()
  for document, program, flags in commands:
    for flag in flags:
      name = flag.split('=')[0]
      if name.startswith('config.'):
        if 'config' not in defined.get(program, set()):
          problems.append(f'{document}: {program} takes no --config overrides (--{name})')
        elif name[len('config.'):] not in keys:
          problems.append(f'{document}: --{name} names no key of latentadv/base_config.py')
      elif program in defined and name not in defined[program]:
        problems.append(f'{document}: {program} defines no flag --{name}')
      if name == 'config' and '=' in flag:
        path = flag.split('=', 1)[1].split(':')[0]
        if not os.path.isfile(os.path.join(REPO_ROOT, path)):
          problems.append(f'{document}: --config={path}: no such file')
  assert not problems, 'Commands that would fail:\n' + '\n'.join(problems)


def test_config_overrides_name_config_keys():
  """Every `--config.<key>` shown anywhere (commands or prose) names a key of the base
  config; wildcards such as `--config.data.*` and quoted error messages (`ConfigError: ...`,
  which may name a misspelt key on purpose) are left out."""
  keys = _config_keys()
  problems = [f'{document}: --config.{key}' for document in DOCUMENTS + [NOTEBOOK]
              for text in _command_texts(document) if not re.match(r'`?\w+Error: ', text)
              for key in re.findall(r'--config\.([\w.]+)(?![\w.]*\*)', text)
              if key.rstrip('.') not in keys]
  assert not problems, 'Overrides of keys the config lacks:\n' + '\n'.join(problems)


def test_generated_tables_match_the_result_files():
  """`python benchmarks/report.py --check` finds every generated table up to date."""
  result = subprocess.run([sys.executable, 'benchmarks/report.py', '--check'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('document', DOCUMENTS)
def test_result_markers_are_paired(document):
  """Each opening result marker has its closing marker, in order (report.py rewrites only
  complete pairs, and rejects names it has no table for)."""
  text = _read(document)
  opened = re.findall(r'<!-- results:(\w+) -->', text)
  closed = re.findall(r'<!-- /results:(\w+) -->', text)
  assert opened == closed, f'{document}: unmatched result markers {opened} vs {closed}'


def test_readme_is_short():
  """The README stays a front door: at most 200 lines."""
  assert len(_read('README.md').splitlines()) <= 200
