"""experiments/flags/thesis.flags as a run reads it: the thesis's levels, references kept in the
collection, and the precision@k that a small collection cannot score named, not dropped."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO
from PIL import Image


def _class_folders(root, classes=3, per_class=12):
  rng = np.random.default_rng(0)
  for c in range(classes):
    base = rng.integers(0, 256, (48, 24), dtype=np.uint8)
    (root / f'class{c}').mkdir(parents=True)
    for i in range(per_class):
      noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(noisy, 'L').save(root / f'class{c}' / f'{i:02d}.png')
  return root


def test_thesis_flags_run_the_thesis_protocol(tmp_path):
  collection = _class_folders(tmp_path / 'caltech_like')
  out = tmp_path / 'out'
  # The thesis's flags as written; only the network is made tiny (random, width 8) for a test.
  args = ['--flagfile=experiments/flags/thesis.flags', f'--collection_dir={collection}',
          f'--out_dir={out}', '--random_width=8', '--height=64', '--width=32', '--batch_size=16',
          '--noprogress']
  env = dict(os.environ, JAX_PLATFORMS='cpu', KERAS_BACKEND='jax')
  result = subprocess.run([sys.executable, '-m', 'experiments.similarity', *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  flags_txt = (out / 'flags.txt').read_text().split()
  for line in ('--keep_references', '--num_classes=0', '--precision_at=50,100',
               '--recall_levels=0.5,0.8', '--num_references=1,3,5',
               '--metrics=euclidean,manhattan,cosine,modified'):
    assert line in flags_txt
  summary = json.loads((out / 'summary.json').read_text())
  # 3 classes x 12 images, all ranked: 2 queries per class of up to 5 drawn images stay in.
  assert summary['num_items'] == 36
  assert 'references kept in the collection' in summary['collection']
  assert [(r['metric'], r['num_references']) for r in summary['results']] == [
      (m, r) for r in (1, 3, 5) for m in ('euclidean', 'manhattan', 'cosine', 'modified')]
  for entry in summary['results']:
    assert entry['num_queries'] == 6
    assert {'inverse_recall@0.5', 'inverse_recall@0.8', 'auirc'} <= set(entry)
    assert not any(name.startswith('precision@') for name in entry)
  # precision@50 and @100 need more items than 36: the run says so on the console and in
  # summary.json.
  notes = [f'precision@{k} left out: collection has 36 items' for k in (50, 100)]
  assert summary['left_out'] == notes
  assert all(note in result.stdout for note in notes)
  # With R = 1 the reference itself is in the collection: Manhattan finds it first.
  single = next(r for r in summary['results']
                if (r['metric'], r['num_references']) == ('manhattan', 1))
  assert single['first_match_rank'] == 1
