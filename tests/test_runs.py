"""Tests for fwjax.runs: flags.txt reproduces a run's configuration; file identities."""

import dataclasses
import json
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
