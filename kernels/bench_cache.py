r"""The pre-resized cache: building it from large scans, the resize step alone, reading batches.

  python -m kernels.bench_cache --quick --out /tmp/bench_cache_quick.json   # under a minute
  python -m kernels.bench_cache --out /tmp/bench_cache.json                 # a few minutes

Side by side in one run, on the host CPU:

1. **Build.** ``--images`` PNG originals of 6000x2500 (height x width) rendered by
   fwjax.data.synthetic (``--designs`` distinct renders, the rest flipped and shifted copies: a
   render at this size takes seconds, while decode and resize cost depends on the size, not the
   design; saved with zlib level 1, which decodes as fast as Pillow's default level 6 and writes
   5x faster), cached at 352x144 for nearest, bilinear and Hamming with
   ``fwjax.data.cache.build_cache`` end to end, once with ``workers=1`` and once with its default
   threads (it threads only from 32 images to resize, so the threaded build lists every file
   twice). Then the same work split into decode (``load_greyscale``) and resize time per image.
2. **Resize alone**, per image and method: Pillow (``resize_pillow``, what the cache uses), the
   numpy reference ``resize`` and the batched JAX path ``resize_batch_jax`` (a batch of
   ``--jax_batch`` identically sized originals; its first call, compile included, is reported
   apart from the steady state). Ratios are time / Pillow time; every output is checked
   bit-identical to Pillow's.
3. **Read.** A cache of ``--cache_rows`` rows at 352x144, built from small synthetic originals
   (704x288) listed repeatedly, read as training does (fwjax/descriptor_data.py): batches of 64
   random sorted rows, ``ResizedCache.images('B-H-N', rows)`` plus the labels, one reader thread.
   Warm: the planes in the page cache (a cache that fits in memory, from the second epoch on).
   Cold: right after evicting the planes' pages with posix_fadvise (the first epoch from this
   machine's disk). The share of demand is cache images/s / 2,730 images/s, the ResNet-50
   float32 training throughput at 352x144 on one H100 (BUILD.md): above 1, reading keeps up.

Timings on a shared machine move with its load; the load average is recorded.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import PIL
from PIL import Image

from fwjax import resample
from fwjax.data import cache as cache_lib
from fwjax.data import images as images_lib
from fwjax.data import manifest as manifest_lib
from fwjax.data import synthetic

#: ResNet-50 float32 training images/s at 352x144 on one H100 (BUILD.md, bench_resnet).
GPU_DEMAND_IMAGES_PER_S = 2730.0


def _clock(fn) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def _median(fn, repeats: int) -> float:
  return statistics.median(_clock(fn)[0] for _ in range(max(1, repeats)))


def make_originals(directory: pathlib.Path, count: int, designs: int, height: int, width: int,
                   seed: int) -> tuple[list[manifest_lib.Example], dict]:
  """Writes ``count`` large PNG impressions from ``designs`` renders; returns them and timings."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  renders, render_s = [], []
  for d in range(designs):
    design = synthetic.random_design(rng)
    seconds, image = _clock(lambda: synthetic.render(design, height, width,
                                                     np.random.default_rng((seed, d))))
    renders.append((image, design.labels))
    render_s.append(seconds)
  examples, save_s = [], []
  for i in range(count):
    image, labels = renders[i % designs]
    copy = i // designs
    image = image[::-1] if copy & 1 else image
    image = image[:, ::-1] if copy & 2 else image
    image = np.roll(image, 37 * (copy // 4), axis=1) if copy >= 4 else image
    path = directory / f'{i:03d}.png'
    start = time.perf_counter()
    Image.fromarray(np.ascontiguousarray(image)).save(path, compress_level=1)
    save_s.append(time.perf_counter() - start)
    examples.append(manifest_lib.Example(path, labels))
  return examples, {'render_s_per_image': statistics.median(render_s),
                    'save_s_per_image': statistics.median(save_s)}


def bench_build(examples: list, work: pathlib.Path, height: int, width: int) -> dict:
  """build_cache end to end (serial and threaded), then decode vs resize per image."""
  result = {}
  serial_s, _ = _clock(lambda: cache_lib.build_cache(examples, work / 'serial', height, width,
                                                     workers=1))
  result['serial'] = {'images': len(examples), 'workers': 1, 'seconds': serial_s,
                      'images_per_s': len(examples) / serial_s}
  # build_cache resizes serially below 32 images; listing each file twice reaches its thread pool.
  rows = examples * max(2, -(-32 // len(examples)))
  workers = min(os.cpu_count() or 1, 8)
  threaded_s, _ = _clock(lambda: cache_lib.build_cache(rows, work / 'threaded', height, width))
  result['threaded'] = {'images': len(rows), 'workers': workers, 'seconds': threaded_s,
                        'images_per_s': len(rows) / threaded_s}
  decode, pillow, numpy = [], {m: [] for m in resample.METHODS}, {m: [] for m in resample.METHODS}
  for example in examples:
    seconds, image = _clock(lambda e=example: images_lib.load_greyscale(e.path))
    decode.append(seconds)
    for method in resample.METHODS:
      pillow[method].append(_clock(lambda m=method: resample.resize_pillow(image, height, width,
                                                                           m))[0])
      numpy[method].append(_clock(lambda m=method: resample.resize(image, height, width, m))[0])
  decode_s = statistics.mean(decode)
  pillow_s = {m: statistics.mean(t) for m, t in pillow.items()}
  numpy_s = {m: statistics.mean(t) for m, t in numpy.items()}
  with_pillow = decode_s + sum(pillow_s.values())
  with_numpy = decode_s + sum(numpy_s.values())
  result['breakdown'] = {
      'decode_s_per_image': decode_s, 'pillow_resize_s_per_image': pillow_s,
      'numpy_resize_s_per_image': numpy_s, 'decode_share_with_pillow': decode_s / with_pillow,
      'serial_images_per_s_with_pillow': 1 / with_pillow,
      'serial_images_per_s_with_numpy': 1 / with_numpy}
  return result


def bench_resize(originals: np.ndarray, height: int, width: int, repeats: int) -> dict:
  """Per-image resize time of Pillow, the numpy reference and JAX on a (B, H, W) batch."""
  image, count = originals[0], len(originals)
  transfer_s, on_device = _clock(lambda: jax.device_put(originals))
  rows = {}
  for method in resample.METHODS:
    expected = resample.resize_pillow(image, height, width, method)
    pillow_s = _median(lambda m=method: resample.resize_pillow(image, height, width, m),
                       max(5, repeats))
    # A collection of scans has many sizes, so the numpy path often builds its weight tables
    # (lru-cached per size) for the image at hand; Pillow always builds its own, in C.
    for table in (resample.coefficients, resample.nearest_indices, resample.weight_matrix):
      table.cache_clear()
    new_size_s, numpy_out = _clock(lambda m=method: resample.resize(image, height, width, m))
    numpy_s = _median(lambda m=method: resample.resize(image, height, width, m), repeats)
    first_s, jax_out = _clock(lambda m=method: resample.resize_batch_jax(on_device, height,
                                                                         width, m))
    steady_s = _median(lambda m=method: resample.resize_batch_jax(on_device, height, width, m),
                       repeats)
    pillow_batch = np.stack([resample.resize_pillow(x, height, width, method) for x in originals])
    rows[method] = {
        'pillow_s': pillow_s, 'numpy_s': numpy_s, 'numpy_vs_pillow': numpy_s / pillow_s,
        'numpy_new_size_s': new_size_s, 'numpy_new_size_vs_pillow': new_size_s / pillow_s,
        'jax_first_call_s': first_s, 'jax_compile_s': max(0.0, first_s - steady_s),
        'jax_batch': count, 'jax_s_per_image': steady_s / count,
        'jax_vs_pillow': steady_s / count / pillow_s,
        'jax_transfer_s_per_image': transfer_s / count,
        'numpy_identical': bool(np.array_equal(numpy_out, expected)),
        'jax_identical': bool(np.array_equal(np.asarray(jax_out), pillow_batch)),
    }
  return rows


def _evict(paths: list[pathlib.Path]) -> None:
  """Drops these files' pages from the page cache; no other file on the machine is touched."""
  for path in paths:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _read_rate(cache: cache_lib.ResizedCache, composition: str, batch: int, batches: int,
               seed: int) -> dict:
  rng = np.random.default_rng(seed)
  labels = np.asarray(cache.labels)
  start = time.perf_counter()
  for _ in range(batches):
    # As fwjax/descriptor_data.py gathers: sorted rows read sequentially from the memory maps.
    rows = np.sort(rng.choice(len(cache), batch, replace=False))
    images = np.asarray(cache.images(composition, rows))
    _ = labels[rows].astype(np.float32)
  seconds = time.perf_counter() - start
  assert images.shape == (batch, cache.height, cache.width, 3)
  return {'batches': batches, 'seconds': seconds, 'batches_per_s': batches / seconds,
          'images_per_s': batches * batch / seconds,
          'share_of_gpu_demand': batches * batch / seconds / GPU_DEMAND_IMAGES_PER_S}


def bench_read(work: pathlib.Path, rows: int, height: int, width: int, composition: str,
               batch: int, batches: int, cold_batches: int, seed: int) -> dict:
  """Builds a ``rows``-row cache from small originals and reads training batches from it."""
  manifest = synthetic.make_descriptor_set(work / 'small', 16, seed=seed, height=704, width=288)
  small = manifest_lib.read_manifest(manifest)
  listed = [small[i % len(small)] for i in range(rows)]
  build_s, cache = _clock(lambda: cache_lib.build_cache(listed, work / 'read', height, width))
  _read_rate(cache, composition, batch, 5, seed)  # warm-up: first-touch page-table set-up
  warm = _read_rate(cache, composition, batch, batches, seed + 1)
  directory = cache.directory
  del cache  # unmap: mapped pages cannot be evicted
  _evict([directory / f'{m}.npy' for m in resample.METHODS])
  cold = _read_rate(cache_lib.ResizedCache.open(work / 'read'), composition, batch, cold_batches,
                    seed + 2)
  return {'rows': rows, 'cache_bytes': rows * height * width * len(resample.METHODS),
          'build_s': build_s, 'build_images_per_s': rows / build_s, 'composition': composition,
          'batch': batch, 'warm': warm, 'cold': cold}


def _print(result: dict) -> None:
  c, o = result['config'], result['originals']
  print(f"originals {c['original_height']}x{c['original_width']} -> {c['height']}x{c['width']}, "
        f"{c['images']} PNGs from {c['designs']} renders (render {o['render_s_per_image']:.1f}"
        f" s, save {o['save_s_per_image']:.2f} s per image); "
        f"{c['cpu_count']} CPUs, load {c['load_average_start'][0]:.1f} at start")
  b = result['build']
  print('\n1. build_cache, 3 methods, end to end')
  for name in ('serial', 'threaded'):
    r = b[name]
    print(f"   {name:<9s} workers={r['workers']}  {r['images']:3d} images  {r['seconds']:6.2f} s  "
          f"{r['images_per_s']:6.2f} images/s")
  d = b['breakdown']
  pillow_ms = sum(d['pillow_resize_s_per_image'].values()) * 1e3
  numpy_ms = sum(d['numpy_resize_s_per_image'].values()) * 1e3
  print(f"   per image, serially: decode {d['decode_s_per_image'] * 1e3:.0f} ms + resize with "
        f"Pillow {pillow_ms:.0f} ms (decode {d['decode_share_with_pillow']:.0%}) -> "
        f"{d['serial_images_per_s_with_pillow']:.2f} images/s; with the numpy reference "
        f"{numpy_ms:.0f} ms -> {d['serial_images_per_s_with_numpy']:.2f} images/s")
  print(f"\n2. resize alone, ms per image (ratio to Pillow); JAX: batch of {c['jax_batch']} "
        f"already on the {c['backend']} device")
  print(f"   {'method':<9s} {'Pillow':>7s} {'numpy ref':>17s} {'numpy, new size':>17s} "
        f"{'JAX steady':>17s} {'JAX 1st call':>12s}  identical to Pillow")
  for method, r in result['resize'].items():
    print(f"   {method:<9s} {r['pillow_s'] * 1e3:7.2f} {r['numpy_s'] * 1e3:8.1f} "
          f"({r['numpy_vs_pillow']:5.1f}x) {r['numpy_new_size_s'] * 1e3:8.1f} "
          f"({r['numpy_new_size_vs_pillow']:5.1f}x) {r['jax_s_per_image'] * 1e3:8.1f} "
          f"({r['jax_vs_pillow']:5.1f}x) {r['jax_first_call_s']:10.2f} s  "
          f"numpy {r['numpy_identical']}, JAX {r['jax_identical']}")
  transfer_ms = next(iter(result['resize'].values()))['jax_transfer_s_per_image'] * 1e3
  print(f"   host -> device copy of the uint8 originals: {transfer_ms:.1f} ms per image (not in "
        "the JAX times)")
  r = result['read']
  print(f"\n3. reading batches of {r['batch']} ({r['composition']}, {c['height']}x{c['width']}) "
        f"from a {r['rows']}-row cache ({r['cache_bytes'] / 2**20:.0f} MiB; built from 704x288 "
        f"originals at {r['build_images_per_s']:.0f} images/s)")
  for name in ('warm', 'cold'):
    x = r[name]
    print(f"   {name:<4s} {x['batches']:4d} batches  {x['batches_per_s']:8.1f} batches/s  "
          f"{x['images_per_s']:9.0f} images/s  = {x['share_of_gpu_demand']:.2f}x the demand of "
          f"{GPU_DEMAND_IMAGES_PER_S:,.0f} images/s (H100 ResNet-50 fp32 training)")
  print(f"\nload average at end {c['load_average_end'][0]:.1f}; total {c['total_s']:.0f} s")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='4 originals from 1 render, JAX batch 2, 1,024 cache rows, 1 repeat')
  parser.add_argument('--images', type=int, default=None, help='large PNGs (default 16)')
  parser.add_argument('--designs', type=int, default=None, help='distinct renders (default 4)')
  parser.add_argument('--original_height', type=int, default=6000)
  parser.add_argument('--original_width', type=int, default=2500)
  parser.add_argument('--height', type=int, default=352)
  parser.add_argument('--width', type=int, default=144)
  parser.add_argument('--jax_batch', type=int, default=None, help='default 4')
  parser.add_argument('--repeats', type=int, default=None, help='default 3')
  parser.add_argument('--cache_rows', type=int, default=None, help='default 4,096')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--composition', default='B-H-N')
  parser.add_argument('--read_batches', type=int, default=None, help='warm; default 300')
  parser.add_argument('--cold_batches', type=int, default=None, help='default 40')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=None, help='default: a temporary folder, removed')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args()
  quick = args.quick
  images = args.images or (4 if quick else 16)
  designs = min(images, args.designs or (1 if quick else 4))
  jax_batch = min(images, args.jax_batch or (2 if quick else 4))
  repeats = args.repeats or (1 if quick else 3)
  cache_rows = args.cache_rows or (1024 if quick else 4096)
  read_batches = args.read_batches or (100 if quick else 300)
  cold_batches = args.cold_batches or (20 if quick else 40)
  resample.composition_methods(args.composition)  # fail on a bad composition before the work

  start = time.perf_counter()
  load_start = os.getloadavg()
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    work = pathlib.Path(tmp)
    examples, originals = make_originals(work / 'originals', images, designs,
                                         args.original_height, args.original_width, args.seed)
    build = bench_build(examples, work, args.height, args.width)
    batch = np.stack([images_lib.load_greyscale(e.path) for e in examples[:jax_batch]])
    resize = bench_resize(batch, args.height, args.width, repeats)
    del batch
    read = bench_read(work, cache_rows, args.height, args.width, args.composition, args.batch,
                      read_batches, cold_batches, args.seed)
  result = {
      'config': {'quick': quick, 'images': images, 'designs': designs,
                 'original_height': args.original_height,
                 'original_width': args.original_width, 'height': args.height,
                 'width': args.width, 'jax_batch': jax_batch, 'repeats': repeats,
                 'cpu_count': os.cpu_count(), 'machine': platform.machine(),
                 'backend': jax.default_backend(), 'jax': jax.__version__,
                 'pillow': PIL.__version__, 'gpu_demand_images_per_s': GPU_DEMAND_IMAGES_PER_S,
                 'load_average_start': load_start, 'load_average_end': os.getloadavg(),
                 'total_s': time.perf_counter() - start},
      'originals': originals, 'build': build, 'resize': resize, 'read': read,
  }
  _print(result)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
