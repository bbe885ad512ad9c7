r"""Training throughput of the descriptor classifier: images/s per device and data-wait per step.

  python -m experiments.bench_training                      # 352x144, float32 and bfloat16
  python -m experiments.bench_training --quick              # width 16, few steps (a smoke run)
  python -m experiments.bench_training --per_device_batch=64 --out=bench_gpu.json   # on a GPU

Runs the real data-parallel train step (fwjax.training.steps, every local device, paper
optimiser) on uint8 batches gathered from an in-memory pool the size of a small cache, fed
through the same background prefetch as fwjax.training.train.fit, so the data-wait column shows
whether the input pipeline keeps up. Compile time is reported apart; throughput is the median over repeats.
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from fwjax.training import losses
from fwjax.training import optim
from fwjax.training import steps
from fwjax import runs
from fwjax.training import feed
from fwjax.models import classifier

_HEIGHT = flags.DEFINE_integer('height', 352, 'Input height.')
_WIDTH = flags.DEFINE_integer('width', 144, 'Input width.')
_PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', 8, 'Images per device per step.')
_WIDTH_MULTIPLIER = flags.DEFINE_float('width_multiplier', 1.0, 'Model width / 64.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes to time.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Repeats (the median is reported).')
_QUICK = flags.DEFINE_bool('quick', False, 'Width 16, 2 steps x 2 repeats.')
_OUT = flags.DEFINE_string('out', None, 'Write the results as JSON here.')




def _batches(pool: np.ndarray, labels: np.ndarray, batch: int, count: int, seed: int):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    idx = np.sort(rng.choice(len(pool), batch, replace=False))
    yield {'image': pool[idx], 'label': labels[idx], 'mask': np.ones(batch, bool)}


def bench(dtype: str, width_multiplier: float, per_device_batch: int, num_steps: int,
          repeats: int) -> dict:
  mesh = steps.make_mesh()
  batch = per_device_batch * mesh.size
  model = classifier.DescriptorClassifier(
      preprocess='inc_d', width=int(round(64 * width_multiplier)), dtype=runs.compute_dtype(dtype),
      bn_axis_name=steps.AXIS)
  shape = (1, _HEIGHT.value, _WIDTH.value, 3)
  variables = jax.jit(model.clone(bn_axis_name=None).init)(jax.random.key(0, impl='rbg'),
                                                           jnp.zeros(shape))
  tx = optim.adamw_groups()
  state = steps.replicate(steps.create_state(variables, tx, jax.random.key(1)), mesh)
  step = steps.make_train_step(model, tx, losses.make_loss('bce'), mesh)
  plan = optim.phase_plan(2, 1000)
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, (max(4 * batch, 256), *shape[1:]), dtype=np.uint8)
  labels = (rng.random((len(pool), 17)) < 0.2).astype(np.float32)

  start = time.perf_counter()
  first = next(_batches(pool, labels, batch, 1, 0))
  state, metrics = step(state, steps.shard_batch(first, mesh), plan.learning_rates(0))
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start

  rates, waits = [], []
  for r in range(repeats):
    waited = 0.0
    start = time.perf_counter()
    for i, (b, wait) in enumerate(feed.prefetch(_batches(pool, labels, batch, num_steps, r + 1),
                                                  mesh)):
      state, metrics = step(state, b, plan.learning_rates(i))
      waited += wait
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    rates.append(batch * num_steps / seconds)
    waits.append(waited / num_steps)
  images_per_second = statistics.median(rates)
  return {'dtype': dtype, 'devices': mesh.size, 'platform': jax.devices()[0].platform,
          'device_kind': jax.devices()[0].device_kind, 'global_batch': batch,
          'height': _HEIGHT.value, 'width': _WIDTH.value,
          'model_width': int(round(64 * width_multiplier)), 'compile_seconds': compile_seconds,
          'images_per_second': images_per_second,
          'images_per_second_per_device': images_per_second / mesh.size,
          'step_ms': 1e3 * batch / images_per_second,
          'data_wait_ms_per_step': 1e3 * statistics.median(waits),
          'loss_finite': bool(np.isfinite(float(metrics['loss'])))}


def main(argv):
  del argv
  width_multiplier = 0.25 if _QUICK.value else _WIDTH_MULTIPLIER.value
  num_steps, repeats = (2, 2) if _QUICK.value else (_STEPS.value, _REPEATS.value)
  results = [bench(d, width_multiplier, _PER_DEVICE_BATCH.value, num_steps, repeats)
             for d in _DTYPES.value]
  try:
    import os  # pylint: disable=import-outside-toplevel
    load = os.getloadavg()[0]
  except OSError:
    load = float('nan')
  print(f'\ntraining throughput, {results[0]["height"]}x{results[0]["width"]}, ResNet-50 width '
        f'{results[0]["model_width"]}, inc_d, {results[0]["devices"]} x '
        f'{results[0]["device_kind"]}, load average {load:.1f}')
  print(f'{"dtype":9} {"batch":>5} {"compile s":>9} {"img/s":>8} {"img/s/dev":>9} '
        f'{"ms/step":>8} {"data wait ms/step":>17} {"vs float32":>10}')
  base = results[0]['images_per_second']
  for r in results:
    print(f'{r["dtype"]:9} {r["global_batch"]:5d} {r["compile_seconds"]:9.1f} '
          f'{r["images_per_second"]:8.1f} {r["images_per_second_per_device"]:9.1f} '
          f'{r["step_ms"]:8.1f} {r["data_wait_ms_per_step"]:17.2f} '
          f'{r["images_per_second"] / base:10.2f}')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump({'results': results, 'load_average': load}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
