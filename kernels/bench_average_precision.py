"""Average precision, fwjax vs scikit-learn, side by side on the same data.

    python -m kernels.bench_average_precision [--samples 1000000] [--labels 17] [--out ap.json]

Times fwjax.metrics.average_precision (exact; compile time reported apart) and the binned
streaming variant against sklearn.metrics.average_precision_score(average=None), checks the exact
results agree to 1e-6 and prints the speed ratio.
"""

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from fwjax import metrics


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--samples', type=int, default=1_000_000)
  parser.add_argument('--labels', type=int, default=17)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--bins', type=int, default=1000)
  parser.add_argument('--quick', action='store_true', help='100,000 samples, 1 repeat')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args()
  if args.quick:
    args.samples, args.repeats = 100_000, 1

  rng = np.random.default_rng(0)
  # Sigmoid-like scores with ties (rounded to 4 decimals) and rare labels, as in the paper.
  prevalence = np.linspace(0.02, 0.4, args.labels)
  y = rng.random((args.samples, args.labels)) < prevalence
  scores = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.2 * y)))
  scores = np.round(scores, 4).astype(np.float32)

  start = time.perf_counter()
  exact = metrics.average_precision(y, scores, average=None)
  first_call = time.perf_counter() - start
  fwjax_s = _median_time(lambda: metrics.average_precision(y, scores, average=None), args.repeats)

  from sklearn.metrics import average_precision_score  # pylint: disable=import-outside-toplevel
  sklearn_s = _median_time(lambda: average_precision_score(y, scores, average=None),
                           args.repeats)
  reference = average_precision_score(y, scores, average=None)
  max_diff = float(np.max(np.abs(exact - reference)))

  histograms = lambda: metrics.average_precision_histograms(y, scores, num_bins=args.bins)
  jax.block_until_ready(histograms())
  binned_s = _median_time(histograms, args.repeats)
  pos, neg = histograms()
  binned = metrics.average_precision_from_histograms(pos, neg, average=None)
  bound = metrics.binned_error_bound(pos, neg)

  result = {
      'samples': args.samples, 'labels': args.labels, 'backend': jax.default_backend(),
      'device': str(jax.devices()[0]), 'cpu_count': os.cpu_count(),
      'load_average': os.getloadavg(), 'machine': platform.machine(),
      'fwjax_exact_s': fwjax_s, 'fwjax_first_call_s': first_call,
      'sklearn_s': sklearn_s, 'speedup_vs_sklearn': sklearn_s / fwjax_s,
      'max_abs_diff_vs_sklearn': max_diff,
      'binned_s': binned_s, 'binned_bins': args.bins,
      'binned_max_abs_error': float(np.max(np.abs(binned - exact))),
      'binned_error_bound_max': float(np.max(bound)),
  }
  print(f"average precision, {args.samples:,} samples x {args.labels} labels "
        f"({result['backend']}, load {result['load_average'][0]:.1f})")
  print(f"  fwjax exact     {fwjax_s * 1e3:9.1f} ms   (first call incl. compile "
        f"{first_call * 1e3:.0f} ms)")
  print(f"  sklearn         {sklearn_s * 1e3:9.1f} ms   -> fwjax is {sklearn_s / fwjax_s:.1f}x "
        f"faster; max |diff| {max_diff:.1e}")
  print(f"  fwjax binned    {binned_s * 1e3:9.1f} ms   ({args.bins} bins; max error "
        f"{result['binned_max_abs_error']:.1e} <= bound {result['binned_error_bound_max']:.1e})")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
