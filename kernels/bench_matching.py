r"""MCNCC benchmark: fwjax.matching against scipy, plain numpy and XLA's direct convolution.

  python -m kernels.bench_matching --quick --out /tmp/bench_matching_quick.json
  python -m kernels.bench_matching --workdir /tmp --out kernels/results/cpu/matching.json

Sizes are FID-300's with HED-VGG16 ``block3`` features (stride 4) of images at half resolution,
i.e. 1/8 of the full-resolution images: references 586 x 156-270 px give (73, 20-34, 256) maps,
stored padded to (73, 34) with their sizes; crime-scene probes 188-592 x 122-241 px give
(24-74, 15-30, 256) maps, each with an elliptic mask of the mark's cells (~78% of its box).
Values are ReLU-like (``max(z - 0.3, 0)``, z standard normal). Default margin (0.5).

Contenders, per (probe, reference) pair, all the same MCNCC (flat channels, clipping):

* ``fwjax``: :func:`fwjax.matching.mcncc` (FFT correlation; a call per timed run, transfers
  and validation included), probes with distinct masks (window statistics per pair) and
  probes without masks (statistics shared by the probes of one shape);
* ``xla_conv``: the direct form fwjax did not choose, in XLA: ``lax.conv_general_dilated``
  with the probe as the filter (``feature_group_count=C``) for the numerator and a second
  convolution of ``r`` and ``r^2`` with the mask for the window statistics;
* ``scipy``: per channel ``scipy.signal.correlate(method='fft')`` of the padded reference with
  the centred probe, and of the reference and its square with the mask (the window sums the
  straightforward way), what a researcher would write;
* ``numpy``: plain numpy, a sliding-window view and ``einsum`` per row of offsets.

Peers run a few pairs per round (they are slow), fwjax a whole set; rates are pairs per second,
ratios peer time / fwjax time per pair (> 1: fwjax faster). The contenders are timed in turns,
each after a 0.2 s pause (see bench_distances), so a slow spell of the shared machine falls on
all of them alike. Hardware share: the FFT work fwjax does (2.5 L log2 L per real transform of
L points, the usual count) per second against the machine's FFT rate (scipy.fft with all cores
on the same canvas, and XLA's own), and the direct form's multiply-adds per pair (3 correlations
of 2 n C per offset) per second against the float32 matmul rate of ``kernels.membw``.

Streaming: one or several probes against a collection stored as a memory-mapped .npy in
``--workdir`` (``--stream_refs`` references, read in chunks by :func:`fwjax.matching.topk`),
extrapolated linearly to ``--collection`` (100,000) references: the whole would be 254 GB of
float32 maps and hours of CPU time.
"""

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import scipy.fft
import scipy.signal

from fwjax import matching
from fwjax.matching import kernels
from kernels import membw
from kernels import timing

REF_H, REF_W = (73, 34)  # stored reference maps (the widest FID-300 reference at 1/8)


def _relu(rng, shape) -> np.ndarray:
  return np.maximum(rng.standard_normal(shape, dtype=np.float32) - 0.3, 0.0)


def _ellipse(h: int, w: int) -> np.ndarray:
  i = (np.arange(h)[:, None] + 0.5) / h - 0.5
  j = (np.arange(w)[None, :] + 0.5) / w - 0.5
  return i * i + j * j <= 0.25


def fid300_probes(rng, count: int, channels: int) -> tuple[list, list]:
  sizes = [(round(rng.uniform(188, 592) / 8), round(rng.uniform(122, 241) / 8))
           for _ in range(count)]
  return [_relu(rng, (h, w, channels)) for h, w in sizes], [_ellipse(h, w) for h, w in sizes]


def fid300_references(rng, count: int, channels: int, out=None) -> tuple[np.ndarray, np.ndarray]:
  refs = np.zeros((count, REF_H, REF_W, channels), np.float32) if out is None else out
  sizes = np.stack([np.full(count, REF_H), np.round(rng.uniform(156, 270, count) / 8)],
                   axis=1).astype(np.int64)
  for i in range(count):
    refs[i] = 0.0
    refs[i, :, :sizes[i, 1]] = _relu(rng, (REF_H, int(sizes[i, 1]), channels))
  return refs, sizes


# ---- peers: one pair at a time, the same semantics as fwjax.matching ----

def _padded(probe, ref, margin):
  (top, bottom), (left, right) = (matching.padding(probe.shape[0], ref.shape[0], margin),
                                  matching.padding(probe.shape[1], ref.shape[1], margin))
  return np.pad(ref, ((top, bottom), (left, right), (0, 0)))


def _centred(probe, mask):
  """(a (C, h, w) centred under the mask, unit norm, 0 for flat channels)."""
  p = np.moveaxis(probe, 2, 0).astype(np.float32)
  cells = p[:, mask]
  a = np.where(mask, p - cells.mean(axis=1)[:, None, None], 0.0)
  sum_sq = (a * a).sum(axis=(1, 2))
  flat = sum_sq <= kernels.FLAT_RTOL * (cells * cells).sum(axis=1)
  return (a / np.sqrt(np.where(flat, 1.0, sum_sq))[:, None, None]
          * ~flat[:, None, None]).astype(np.float32)


def _best(total, channels):
  scores = total / channels
  flat = int(np.argmax(scores))
  return float(scores.reshape(-1)[flat]), divmod(flat, scores.shape[1])


def scipy_pair(probe, mask, ref, margin):
  """Per channel FFT correlation with scipy.signal.correlate, window sums by the mask."""
  padded = _padded(probe, ref, margin)
  a = _centred(probe, mask)
  m = mask.astype(np.float32)
  n = float(m.sum())
  energy = (ref * ref).mean(axis=(0, 1))
  total = 0.0
  for c in range(probe.shape[2]):
    rc = np.ascontiguousarray(padded[:, :, c])
    num = scipy.signal.correlate(rc, a[c], mode='valid', method='fft')
    s1 = scipy.signal.correlate(rc, m, mode='valid', method='fft')
    s2 = scipy.signal.correlate(rc * rc, m, mode='valid', method='fft')
    var = s2 - s1 * s1 / n
    flat = var <= kernels.FLAT_RTOL * n * energy[c]
    total = total + np.where(flat, 0.0, np.clip(num / np.sqrt(np.where(flat, 1.0, var)), -1, 1))
  return _best(total, probe.shape[2])


def numpy_pair(probe, mask, ref, margin):
  """Plain numpy: every window through a sliding view, one row of offsets at a time."""
  padded = _padded(probe, ref, margin)
  h, w, channels = probe.shape
  a = _centred(probe, mask)
  m = mask.astype(np.float32)
  n = float(m.sum())
  energy = (ref * ref).mean(axis=(0, 1))
  windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(0, 1))
  total = np.zeros(windows.shape[:2])
  for y in range(windows.shape[0]):
    row = windows[y]  # (nx, C, h, w)
    num = np.einsum('xcij,cij->xc', row, a)
    s1 = np.einsum('xcij,ij->xc', row, m)
    s2 = np.einsum('xcij,ij->xc', row * row, m)
    var = s2 - s1 * s1 / n
    flat = var <= kernels.FLAT_RTOL * n * energy
    total[y] = np.where(flat, 0.0, np.clip(num / np.sqrt(np.where(flat, 1.0, var)), -1, 1)).sum(1)
  return _best(total, channels)


def xla_conv_scores(probe, mask, refs, margin):
  """The direct form in XLA for one probe against full-size references (N, H, W, C)."""
  h, w, channels = probe.shape
  (top, bottom), (left, right) = (matching.padding(h, refs.shape[1], margin),
                                  matching.padding(w, refs.shape[2], margin))
  a = np.moveaxis(_centred(probe, mask), 0, 2)  # (h, w, C)
  return _xla_conv(jnp.asarray(refs), jnp.asarray(a), jnp.asarray(mask, jnp.float32),
                   ((top, bottom), (left, right)))


@functools.partial(jax.jit, static_argnums=3)
def _xla_conv(refs, a, m, pads):
  high = lax.Precision.HIGHEST
  dims = ('NHWC', 'HWIO', 'NHWC')
  padded = jnp.pad(refs, ((0, 0), *pads, (0, 0)))
  num = lax.conv_general_dilated(padded, a[:, :, None, :], (1, 1), 'VALID',
                                 dimension_numbers=dims, feature_group_count=a.shape[2],
                                 precision=high)  # (N, ny, nx, C)
  batch, height, width, channels = padded.shape
  per_channel = jnp.transpose(padded, (0, 3, 1, 2)).reshape(batch * channels, height, width, 1)
  stacked = jnp.concatenate([per_channel, per_channel * per_channel], axis=0)
  sums = lax.conv_general_dilated(stacked, m[:, :, None, None], (1, 1), 'VALID',
                                  dimension_numbers=dims, precision=high)[..., 0]
  s1, s2 = jnp.split(sums.reshape(2, batch, channels, *sums.shape[1:]), 2)
  s1, s2 = jnp.moveaxis(s1[0], 1, 3), jnp.moveaxis(s2[0], 1, 3)
  n = m.sum()
  energy = jnp.mean(refs * refs, axis=(1, 2))[:, None, None, :]
  var = s2 - s1 * s1 / n
  flat = var <= kernels.FLAT_RTOL * n * energy
  ncc = jnp.where(flat, 0.0, jnp.clip(num * lax.rsqrt(jnp.where(flat, 1.0, var)), -1, 1))
  return jnp.max(jnp.mean(ncc, axis=3).reshape(batch, -1), axis=1)


# ---- the machine's rates and fwjax's work ----

def _fft_flops(length: int) -> float:
  return 2.5 * length * math.log2(length)


def fft_rates(canvas: tuple[int, int], channels: int, repeats: int) -> dict:
  """FLOP/s of a batch of float32 inverse real 2-D FFTs of the canvas: scipy.fft (pocketfft,
  all cores) and XLA (jnp.fft, what fwjax runs)."""
  batch = 8 * channels
  spectrum = (np.ones((batch, canvas[0], canvas[1] // 2 + 1), np.complex64))
  flops = batch * _fft_flops(canvas[0] * canvas[1])
  workers = os.cpu_count()
  host = statistics.median(
      timing.seconds(lambda: scipy.fft.irfft2(spectrum, s=canvas, workers=workers))
      for _ in range(repeats))
  on_device = jnp.asarray(spectrum)
  inverse = jax.jit(lambda x: jnp.fft.irfft2(x, s=canvas))
  jax.block_until_ready(inverse(on_device))
  xla = statistics.median(timing.seconds(lambda: inverse(on_device)) for _ in range(repeats))
  return {'canvas': list(canvas), 'scipy_fft_flops_per_s': flops / host,
          'xla_fft_flops_per_s': flops / xla}


def fwjax_fft_flops(probes, masks, sizes, channels, margin) -> tuple[float, list]:
  """Nominal FFT flops of one fwjax.matching.mcncc call, and its canvases."""
  prepared = matching.stream._prepare_probes(  # pylint: disable=protected-access
      probes, masks, channels, margin, False, (), int(sizes[:, 0].max()),
      int(sizes[:, 1].max()))
  total = 0.0
  for group in prepared.groups:
    per = _fft_flops(group.canvas[0] * group.canvas[1])
    # per reference and channel: r and r^2; per probe: its numerator and, where its mask
    # changes, the two window statistics (the probes' own forward transforms are per chunk)
    transforms = len(sizes) * channels * (2 + len(group.a) + 2 * int(group.new_mask.sum()))
    total += transforms * per
  return total, [g.canvas for g in prepared.groups]


def direct_flops(probe, mask, ref_size, margin) -> float:
  """Multiply-adds x 2 of the direct form for one pair: 3 correlations of n cells per channel."""
  h, w = mask.shape
  ny = ref_size[0] + sum(matching.padding(h, ref_size[0], margin)) - h + 1
  nx = ref_size[1] + sum(matching.padding(w, ref_size[1], margin)) - w + 1
  return 3 * 2 * ny * nx * int(mask.sum()) * probe.shape[2]


# ---- the runs ----

def run_fid300(rng, num_probes, num_refs, channels, peer_pairs, repeats, budget_s, limits):
  margin = matching.DEFAULT_MARGIN
  probes, masks = fid300_probes(rng, num_probes, channels)
  refs, sizes = fid300_references(rng, num_refs, channels)
  pairs = num_probes * num_refs
  no_mask_probes = [_relu(rng, probes[0].shape) for _ in range(num_probes)]
  conv_refs = min(num_refs, 2)  # the direct form is slow: a few pairs say enough
  contenders = {
      'fwjax': lambda: matching.mcncc(probes, refs, probe_masks=masks, reference_sizes=sizes),
      'fwjax_no_masks': lambda: matching.mcncc(no_mask_probes, refs, reference_sizes=sizes),
      'xla_conv': lambda: xla_conv_scores(probes[0], masks[0], refs[:conv_refs], margin),
      'scipy': lambda: [scipy_pair(probes[i % num_probes], masks[i % num_probes],
                                   refs[i, :, :sizes[i, 1]], margin) for i in range(peer_pairs)],
      'numpy': lambda: [numpy_pair(probes[i % num_probes], masks[i % num_probes],
                                   refs[i, :, :sizes[i, 1]], margin)
                        for i in range(max(1, peer_pairs // 4))],
  }
  counts = {'fwjax': pairs, 'fwjax_no_masks': pairs, 'xla_conv': conv_refs,
            'scipy': peer_pairs, 'numpy': max(1, peer_pairs // 4)}
  timed = timing.timed_together(contenders, repeats, budget_s)
  rates = {name: counts[name] / t for name, (_, t) in timed.items()}
  row = {'scenario': 'fid300', 'probes': num_probes, 'references': num_refs,
         'channels': channels, 'margin': margin, 'pairs_per_s': rates,
         'first_call_s': {name: first for name, (first, _) in timed.items()},
         'pairs_timed': counts,
         'ratios_vs_fwjax': {name: rates['fwjax'] / rate for name, rate in rates.items()}}
  # Agreement: the peers' scores against fwjax's on the pairs they ran.
  got = matching.mcncc(probes, refs, probe_masks=masks, reference_sizes=sizes)
  scipy_scores = [s for s, _ in contenders['scipy']()]
  row['scipy_max_abs_diff'] = float(max(
      abs(got.scores[i % num_probes, i] - s) for i, s in enumerate(scipy_scores)))
  conv_got = matching.mcncc(probes[:1], refs[:conv_refs], probe_masks=masks[:1])
  row['xla_conv_max_abs_diff'] = float(np.max(np.abs(
      np.asarray(contenders['xla_conv']()) - conv_got.scores[0])))
  fft_work, canvases = fwjax_fft_flops(probes, masks, sizes, channels, margin)
  fft_limits = fft_rates(max(canvases, key=lambda c: c[0] * c[1]), channels, 3)
  seconds = pairs / rates['fwjax']
  row['canvases'] = [list(c) for c in canvases]
  row['fft_limits'] = fft_limits
  row['fft_flops_per_s'] = fft_work / seconds
  row['fft_share_scipy'] = fft_work / seconds / fft_limits['scipy_fft_flops_per_s']
  row['fft_share_xla'] = fft_work / seconds / fft_limits['xla_fft_flops_per_s']
  direct = np.mean([direct_flops(p, m, s, margin) for p, m in zip(probes, masks)
                    for s in sizes])
  row['direct_flops_per_pair'] = float(direct)
  row['direct_equivalent_matmul_share'] = direct * rates['fwjax'] / limits['matmul_flops_per_s']
  row['xla_conv_matmul_share'] = (direct_flops(probes[0], masks[0], (REF_H, REF_W), margin)
                                  * rates['xla_conv'] / limits['matmul_flops_per_s'])
  return row


def run_stream(rng, workdir, num_refs, collection, channels, probe_counts, repeats, budget_s):
  path = os.path.join(workdir, f'fwjax_bench_matching_{num_refs}x{REF_H}x{REF_W}x{channels}.npy')
  start = time.perf_counter()
  stored = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32,
                                     shape=(num_refs, REF_H, REF_W, channels))
  _, sizes = fid300_references(rng, num_refs, channels, out=stored)
  stored.flush()
  del stored
  write_s = time.perf_counter() - start
  print(f'collection {path} ({os.path.getsize(path) / 1e9:.2f} GB) written in {write_s:.1f}s',
        flush=True)
  rows = []
  try:
    for count in probe_counts:
      probes, masks = fid300_probes(rng, count, channels)
      timed = timing.timed_together({'fwjax_topk': functools.partial(
          matching.topk, probes, path, 10, probe_masks=masks, reference_sizes=sizes)},
                              repeats, budget_s)
      (first, seconds), = timed.values()
      rate = count * num_refs / seconds
      rows.append({'scenario': 'stream', 'probes': count, 'references_timed': num_refs,
                   'collection': collection, 'seconds': seconds, 'first_call_s': first,
                   'pairs_per_s': rate,
                   'extrapolated_collection_s': count * collection / rate})
      _print_stream(rows[-1])
  finally:
    os.remove(path)
  return rows


def _print_fid300(row: dict) -> None:
  rates, ratios = row['pairs_per_s'], row['ratios_vs_fwjax']
  print(f"FID-300 sizes: {row['probes']} probes x {row['references']} references, C="
        f"{row['channels']}, margin {row['margin']}, canvases {row['canvases']}", flush=True)
  for name, rate in rates.items():
    print(f"  {name:<15s} {rate:9.2f} pairs/s   fwjax is {ratios[name]:8.2f}x  (timed on "
          f"{row['pairs_timed'][name]} pairs, first call {row['first_call_s'][name]:.1f}s)")
  limits = row['fft_limits']
  print(f"  fwjax FFT work {row['fft_flops_per_s'] / 1e9:.2f} GFLOP/s = "
        f"{row['fft_share_scipy']:.0%} of scipy.fft's {limits['scipy_fft_flops_per_s'] / 1e9:.2f}"
        f" GFLOP/s, {row['fft_share_xla']:.0%} of XLA's {limits['xla_fft_flops_per_s'] / 1e9:.2f}")
  print(f"  direct form: {row['direct_flops_per_pair'] / 1e9:.2f} GFLOP per pair; fwjax's rate "
        f"equals {row['direct_equivalent_matmul_share']:.2f}x the matmul peak doing it directly;"
        f" xla_conv reaches {row['xla_conv_matmul_share']:.1%} of it")
  print(f"  max |score - fwjax|: scipy {row['scipy_max_abs_diff']:.2e}, xla_conv "
        f"{row['xla_conv_max_abs_diff']:.2e}", flush=True)


def _print_stream(row: dict) -> None:
  print(f"stream: {row['probes']} probe(s) x {row['references_timed']} references (memmap, "
        f"top-10): {row['seconds']:.2f}s, {row['pairs_per_s']:.2f} pairs/s (first call "
        f"{row['first_call_s']:.1f}s); {row['collection']:,} references: "
        f"{row['extrapolated_collection_s'] / 3600:.2f} h extrapolated", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='small sets, C=64, 1 repeat')
  parser.add_argument('--channels', type=int, default=None, help='C (default 256)')
  parser.add_argument('--probes', type=int, default=None, help='FID-300 set probes (4)')
  parser.add_argument('--references', type=int, default=None, help='FID-300 set refs (24)')
  parser.add_argument('--peer_pairs', type=int, default=None, help='pairs per scipy run (4)')
  parser.add_argument('--stream_refs', type=int, default=None,
                      help='references in the memory-mapped collection that is timed (240)')
  parser.add_argument('--stream_probes', default='1,8', help='comma-separated probe counts')
  parser.add_argument('--collection', type=int, default=100_000,
                      help='references the stream is extrapolated to')
  parser.add_argument('--repeats', type=int, default=None)
  parser.add_argument('--budget_s', type=float, default=300.0, help='timing rounds stop after')
  parser.add_argument('--workdir', default='/tmp')
  parser.add_argument('--out', help='write the results as JSON here')
  args = parser.parse_args()
  channels = args.channels or (64 if args.quick else 256)
  num_probes = args.probes or (2 if args.quick else 4)
  num_refs = args.references or (8 if args.quick else 24)
  peer_pairs = args.peer_pairs or (2 if args.quick else 4)
  stream_refs = args.stream_refs or (32 if args.quick else 240)
  repeats = args.repeats or (1 if args.quick else 3)
  print(f'backend={jax.default_backend()} devices={jax.local_device_count()} '
        f'cores={os.cpu_count()} C={channels}', flush=True)
  limits = membw.measure(quick=True)
  print(f"limits: matmul {limits['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, memory "
        f"{limits['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
  rng = np.random.default_rng(0)
  fid = run_fid300(rng, num_probes, num_refs, channels, peer_pairs, repeats, args.budget_s,
                   limits)
  _print_fid300(fid)
  # A streamed pass is long (minutes on a 2-core CPU): its first call and one more are timed.
  stream = run_stream(rng, args.workdir, stream_refs, args.collection, channels,
                      [int(v) for v in args.stream_probes.split(',')], 1, args.budget_s)
  result = {'limits': limits, 'rows': [fid, *stream],
            'config': {'channels': channels, 'probes': num_probes, 'references': num_refs,
                       'peer_pairs': peer_pairs, 'stream_refs': stream_refs,
                       'collection': args.collection, 'repeats': repeats,
                       'machine': platform.node(), 'backend': jax.default_backend(),
                       'devices': jax.local_device_count(), 'cores': os.cpu_count(),
                       'jax': jax.__version__}}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
