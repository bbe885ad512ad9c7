"""Class folders of photograph variants (fwjax.data.photo_variants) on the shared colour photos."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fwjax.data import photo_variants, retrieval_sets


@pytest.fixture(scope='module')
def photos(shared_dir):
  folder = shared_dir / 'data' / 'imagenet_samples'
  return {p.stem: p for p in sorted(folder.glob('*.jpg'))}


def test_variant_folders_are_a_class_folder_collection(tmp_path, photos, shared_dir):
  refs = sorted((shared_dir / 'data' / 'fid300_dev' / 'references').glob('*.png'))[:5]
  out = photo_variants.make_variant_folders(tmp_path / 'c', photos, 4, distractors=refs, seed=1)
  items, other = retrieval_sets.list_images(out)
  assert other == 0
  classes = [p.parent.name for p in items]
  assert sorted(set(classes)) == sorted(list(photos) + ['others'])
  assert all(classes.count(c) == 4 for c in photos) and classes.count('others') == 5
  # Distractors are linked to the originals, not copied.
  assert all((out / 'others' / r.name).resolve() == r.resolve() for r in refs)
  for name in photos:
    pixels = []
    for path in sorted((out / name).glob('*.jpg')):
      with Image.open(path) as image:
        assert image.mode == 'RGB' and max(image.size) <= photo_variants.VARIANT_SIZE
        pixels.append(np.asarray(image.resize((32, 32)), np.float64))
      # Still a colour photograph with content: channels differ, not a flat picture.
      assert np.abs(pixels[-1][..., 0] - pixels[-1][..., 2]).mean() > 2 and pixels[-1].std() > 10
    # Variants differ from each other (seeded crops and light, not copies).
    assert min(np.abs(a - b).mean() for i, a in enumerate(pixels) for b in pixels[i + 1:]) > 1


def test_variants_are_a_function_of_the_seed(tmp_path, photos):
  one = {'cat': photos['cat']}
  a = photo_variants.make_variant_folders(tmp_path / 'a', one, 2, seed=3)
  b = photo_variants.make_variant_folders(tmp_path / 'b', one, 2, seed=3)
  c = photo_variants.make_variant_folders(tmp_path / 'c', one, 2, seed=4)
  read = lambda root: (root / 'cat' / 'cat_001.jpg').read_bytes()
  assert read(a) == read(b) != read(c)


def test_refused_settings(tmp_path, photos):
  with pytest.raises(ValueError, match='variants_per_class must be >= 2'):
    photo_variants.make_variant_folders(tmp_path, photos, 1)
  with pytest.raises(ValueError, match="'others' is both"):
    photo_variants.make_variant_folders(tmp_path, {'others': photos['cat']}, 2,
                                        distractors=[photos['cat']])
  with pytest.raises(FileNotFoundError, match='class .dog. not found'):
    photo_variants.make_variant_folders(tmp_path, {'dog': tmp_path / 'dog.jpg'}, 2)


def test_entry_point_refuses_two_photographs_of_one_name(tmp_path, photos):
  # One class per file name: cat.jpg and cat.png would become one class, silently.
  folder = tmp_path / 'photos'
  folder.mkdir()
  (folder / 'cat.jpg').write_bytes(photos['cat'].read_bytes())
  Image.open(photos['cat']).save(folder / 'cat.png')
  done = subprocess.run([sys.executable, '-m', 'experiments.make_synthetic', '--mode=photo_folders',
                         f'--out={tmp_path / "out"}', '--n=2', f'--photos={folder}'],
                        cwd=pathlib.Path(__file__).resolve().parents[2], capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode != 0
  assert '--photos: several files named cat' in done.stderr
  assert not (tmp_path / 'out').exists()
