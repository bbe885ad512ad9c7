r"""This machine's hardware limits: memory bandwidth (a large copy) and float32 matmul FLOP rate.

  python -m kernels.membw --quick
  python -m kernels.membw --out /tmp/membw.json

Bandwidth counts bytes read + written (a copy of B bytes moves 2B). Measured two ways, medians
over repeats:

* ``host_copy``: ``np.copyto`` of a buffer well beyond the last-level cache (host RAM, one thread).
* ``device_copy``: a jitted ``x * 2`` on the default JAX device (CPU: XLA's threads over RAM;
  GPU: HBM; an H200 moves about 4.3 TB/s).

``matmul_flops``: float32 ``Precision.HIGHEST`` matmul of two n x n matrices on the default device.
The distance and ranking benchmarks import these functions to state their share of the limit.
"""

import argparse
import json
import statistics
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def _median(fn, repeats: int) -> float:
  fn()  # warm-up: page faults, compilation
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def host_copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
  """Bytes/s (read + written) of a host ``np.copyto`` of ``nbytes``."""
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  return 2 * src.nbytes / _median(lambda: np.copyto(dst, src), repeats)


def device_copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
  """Bytes/s (read + written) of a jitted elementwise pass over ``nbytes`` on the default device."""
  # The input buffer is donated and reused, so the pass does not also time fresh allocations
  # (page faults), as the host copy into a preallocated buffer does not either.
  state = [jnp.ones(nbytes // 4, jnp.float32)]
  scale = jax.jit(lambda v: v * 0.5, donate_argnums=0)

  def one_pass():
    state[0] = scale(state[0])
    return state[0]

  return 2 * nbytes / _median(one_pass, repeats)


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a float32 full-precision (n, n) x (n, n) matmul on the default device."""
  a = jnp.ones((n, n), jnp.float32)
  b = jnp.ones((n, n), jnp.float32)
  product = jax.jit(lambda u, v: jnp.matmul(u, v, precision=lax.Precision.HIGHEST))
  return 2 * n**3 / _median(lambda: product(a, b), repeats)


def measure(quick: bool = False) -> dict:
  """All three limits; ``memory_bandwidth`` is the larger of the two copies."""
  nbytes = (256 << 20) if quick else (1 << 30)
  repeats = 3 if quick else 5
  host = host_copy_bandwidth(nbytes, repeats)
  device = device_copy_bandwidth(nbytes, repeats)
  return {
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind),
      'buffer_bytes': nbytes,
      'host_copy_bytes_per_s': host,
      'device_copy_bytes_per_s': device,
      'memory_bandwidth_bytes_per_s': max(host, device),
      'matmul_flops_per_s': matmul_flops(1024 if quick else 2048, repeats),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smaller buffers, fewer repeats')
  parser.add_argument('--out', help='write the figures as JSON here')
  args = parser.parse_args()
  limits = measure(args.quick)
  print(f"backend {limits['backend']} ({limits['device']})")
  print(f"host copy     {limits['host_copy_bytes_per_s'] / 1e9:8.2f} GB/s (read + written)")
  print(f"device copy   {limits['device_copy_bytes_per_s'] / 1e9:8.2f} GB/s (read + written)")
  print(f"matmul f32    {limits['matmul_flops_per_s'] / 1e9:8.1f} GFLOP/s (Precision.HIGHEST)")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(limits, f, indent=2)


if __name__ == '__main__':
  main()
