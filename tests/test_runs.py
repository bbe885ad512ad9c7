"""Tests for fwjax.runs: flags.txt reproduces a run's configuration; file identities; the flags
error messages name exist; atomic run records; library logging kept off the console."""

import ast
import dataclasses
import io
import json
import logging
import re
import subprocess
import sys

import pytest
from absl import flags

from fwjax import runs
from fwjax.descriptor.config import DescriptorConfig
from fwjax.similarity.config import SimilarityConfig

from conftest import REPO


@dataclasses.dataclass
class _Config:
  out_dir: str
  size: tuple[int, int] = (3, 4)
  rate: float = 1e-3
  names: tuple[str, ...] = ()
  on: bool = True
  off: bool = False
  maybe: str | None = None


def test_flags_text_parses_back_to_the_same_values():
  config = _Config(out_dir='/tmp/x', size=(5, 6), rate=0.02, names=('a', 'b'), off=True)
  values = flags.FlagValues()
  flags.DEFINE_string('out_dir', None, '', flag_values=values)
  flags.DEFINE_list('size', [], '', flag_values=values)
  flags.DEFINE_float('rate', 0.0, '', flag_values=values)
  flags.DEFINE_list('names', [], '', flag_values=values)
  flags.DEFINE_bool('on', False, '', flag_values=values)
  flags.DEFINE_bool('off', False, '', flag_values=values)
  flags.DEFINE_string('maybe', 'unset', '', flag_values=values)
  values(['prog', *runs.flags_text(config).split()])
  assert values.out_dir == '/tmp/x' and values.size == ['5', '6'] and values.rate == 0.02
  assert values.names == ['a', 'b'] and values.on and values.off
  assert values.maybe == 'unset'  # None is left out: the flag keeps its own default


@pytest.mark.parametrize('entry_point, config_class', [
    ('experiments.descriptor', DescriptorConfig), ('experiments.similarity', SimilarityConfig)])
def test_every_config_field_is_a_flag_with_the_same_default(entry_point, config_class):
  # Each entry point in its own process: both define --manifest, --seed ... in absl's FLAGS.
  script = (f'import json, {entry_point}; from absl import flags; '
            'print(json.dumps({n: flags.FLAGS[n].default for n in flags.FLAGS}, default=list))')
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  defaults = json.loads(out.splitlines()[-1])
  for field in dataclasses.fields(config_class):
    assert field.name in defaults, f'{entry_point} has no --{field.name}'
    if field.default is not dataclasses.MISSING and field.default is not None:
      want = field.default
      if isinstance(want, tuple):
        want = [str(v) for v in want]
        got = [str(type(field.default[0])(v)) for v in defaults[field.name]] if want else []
      else:
        got = defaults[field.name]
      assert got == want, f'--{field.name}: flag default {got!r}, config default {want!r}'


def test_weights_identity_hashes_content_not_name(tmp_path):
  (tmp_path / 'a.pth').write_bytes(b'weights')
  (tmp_path / 'b.pth').write_bytes(b'weights')
  (tmp_path / 'c.pth').write_bytes(b'other')
  assert runs.weights_identity(tmp_path / 'a.pth') == runs.weights_identity(tmp_path / 'b.pth')
  assert runs.weights_identity(tmp_path / 'a.pth') != runs.weights_identity(tmp_path / 'c.pth')
  folder = tmp_path / 'ckpt'
  (folder / 'sub').mkdir(parents=True)
  (folder / 'sub' / 'x').write_bytes(b'1')
  before = runs.weights_identity(folder)
  (folder / 'sub' / 'x').write_bytes(b'2')
  assert runs.weights_identity(folder) != before


def test_compute_dtype_names_the_flag():
  with pytest.raises(ValueError, match='--dtype must be one of float32, bfloat16'):
    runs.compute_dtype('float16')


# Issue 16, finding 3: error messages advised flags that no job has (--max_pixels). Every
# --flag named in a raise statement of the library must be a flag of each job that imports
# the module raising it (each entry point in its own process: both define --manifest ...).

ENTRY_POINTS = ('experiments.descriptor', 'experiments.similarity', 'experiments.grid',
                'experiments.compare')
_FLAG = re.compile(r'(?<![\w-])--([a-z][a-z0-9_]*)')


def _flags_named_in_raises() -> dict[str, dict[str, list[int]]]:
  """{module: {flag: [line, ...]}} for the string constants inside every raise of fwjax."""
  named: dict[str, dict[str, list[int]]] = {}
  for path in sorted((REPO / 'fwjax').rglob('*.py')):
    module = '.'.join(path.relative_to(REPO).with_suffix('').parts).removesuffix('.__init__')
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if not isinstance(node, ast.Raise) or node.exc is None:
        continue
      for part in ast.walk(node.exc):
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
          for flag in _FLAG.findall(part.value):
            named.setdefault(module, {}).setdefault(flag, []).append(node.lineno)
  return named


def _job_flags(entry_point: str) -> tuple[set[str], set[str], set[str]]:
  """(flags, boolean flags, fwjax modules imported) of an entry point, in its own process."""
  script = (f'import json, sys, {entry_point}; from absl import flags; '
            'print(json.dumps([list(flags.FLAGS), '
            '[n for n in flags.FLAGS if flags.FLAGS[n].boolean], '
            "[m for m in sys.modules if m.split('.')[0] == 'fwjax']]))")
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  names, booleans, modules = json.loads(out.splitlines()[-1])
  return set(names), set(booleans), set(modules)


def test_every_flag_an_error_message_names_exists_in_the_jobs_that_raise_it():
  named = _flags_named_in_raises()
  assert 'max_pixels' in named['fwjax.data.images']  # the finding: now a flag of both jobs
  jobs = {entry_point: _job_flags(entry_point) for entry_point in ENTRY_POINTS}

  def defines(job, flag):
    names, booleans, _ = jobs[job]
    return flag in names or (flag.startswith('no') and flag[2:] in booleans)

  problems = []
  for module, flags_named in named.items():
    importers = [job for job, (_, _, modules) in jobs.items() if module in modules]
    for flag, lines in flags_named.items():
      where = f'{module} line {lines[0]}: --{flag}'
      if not any(defines(job, flag) for job in ENTRY_POINTS):
        problems.append(f'{where} is a flag of no job')
      problems += [f'{where} is not a flag of {job}, which imports it'
                   for job in importers if not defines(job, flag)]
  assert not problems, '\n'.join(problems)


# Finding 1: run records are written atomically, so a refused or killed run never leaves a
# half-written one. Finding 9: library logging goes to the run folder, not the console.

def test_atomic_write_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
  path = tmp_path / 'summary.json'
  runs.write_atomic(path, 'old\n')
  with pytest.raises(RuntimeError), runs.atomic_open(path) as f:
    f.write('half of the new')
    raise RuntimeError('killed mid-write')
  assert path.read_text() == 'old\n'
  assert [p.name for p in tmp_path.iterdir()] == ['summary.json']  # no temporary file left
  with runs.atomic_open(path, 'wb') as f:
    f.write(b'new\n')
  assert path.read_text() == 'new\n'


def test_library_logging_goes_to_the_run_folder_not_the_console(tmp_path):
  console = io.StringIO()
  handler = logging.StreamHandler(console)
  root = logging.getLogger()
  root.addHandler(handler)
  library = logging.getLogger('orbax.checkpoint.test')
  library.setLevel(logging.INFO)
  try:
    with runs.quiet_console():
      with runs.log_file(tmp_path / 'logs' / 'job.log'):
        library.info('Saving checkpoint at step 1')
        library.warning('disk almost full')
      library.info('after the run folder is closed')
    library.warning('after the job')
  finally:
    root.removeHandler(handler)
  assert console.getvalue().splitlines() == ['disk almost full', 'after the job']
  logged = (tmp_path / 'logs' / 'job.log').read_text()
  assert 'Saving checkpoint at step 1' in logged and 'disk almost full' in logged
  assert 'after the run folder' not in logged
