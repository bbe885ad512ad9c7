r"""ResNet-50 throughput: fwjax (Flax, XLA) next to the same network in PyTorch (CPU).

  python -m kernels.bench_resnet --quick --out /tmp/bench_resnet_quick.json
  python -m kernels.bench_resnet --out bench_resnet.json                     # all sizes
  python -m kernels.bench_resnet --batch_size=128 --torch_batch_size=128 --out gpu.json  # GPU

For each input size (224x224, 352x144, 464x192, 928x384) and compute dtype (float32; bfloat16
with float32 parameters, i.e. mixed precision) it times, on the same random images:

* forward: ``ResNet50().apply(variables, x, train=False)`` (inference, running BatchNorm stats);
* training step: forward in train mode + softmax cross-entropy on 1000 classes + backward + SGD
  with momentum, BatchNorm statistics updated (state donated, as in a real loop);

and the same two in PyTorch (a hand-built torchvision-layout ResNet-50, since torchvision is not
installable here; ``channels_last`` memory format, ``torch.autocast(bfloat16)`` for mixed
precision, eager mode; on the GPU when CUDA is there, else on the CPU). Images/s are medians
over ``--repeats`` timed steps after warm-up; JAX compile time (``lower().compile()``) and
PyTorch's first-call time are reported apart. Inputs already sit on the device (no host
transfer). The batch is ``--batch_size`` at 224x224 and scaled to keep pixels per batch constant
(at least 1), so every size uses about the same memory.

FLOPs: ResNet-50 does 4.09 G multiply-adds = 8.18 GFLOP per 224x224 forward (torchvision's
"4.09 GFLOPS" counts multiply-adds); other sizes scale by pixel count; a training step counts
3x the forward. XLA's own count (``cost_analysis``) is printed beside it. On a GPU the achieved
FLOP/s is reported as a share of ``--peak_flops`` (default 989e12: H100/H200 SXM dense bf16).
On NVIDIA GPUs the float32 rows use JAX's default matmul precision (TF32 tensor cores), as
PyTorch's cuDNN convolutions do by default; fwjax's parity tests pin 'highest' instead.
Reference point: NVIDIA's ResNet-50 v1.5 mixed-precision training reaches about 2,500 images/s
on one A100 at 224x224 (about 20% of the A100's 312 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fwjax.models import resnet

try:
  import torch  # pylint: disable=g-import-not-at-top
  from kernels import _torch_resnet  # pylint: disable=g-import-not-at-top
except ImportError:  # The fwjax columns still run; PyTorch's say 'n/a'.
  torch = None

SIZES = ((224, 224), (352, 144), (464, 192), (928, 384))
FWD_FLOPS_224 = 2 * 4.09e9


def model_flops(height: int, width: int, train: bool) -> float:
  """Approximate FLOPs of one image (2 per multiply-add), 3x forward for a training step."""
  return FWD_FLOPS_224 * height * width / (224 * 224) * (3 if train else 1)


def _xla_flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis['flops'])
  except Exception:  # Not every backend reports costs; the column then says n/a.
    return None


def _seconds(step) -> float:
  start = time.perf_counter()
  step()
  return time.perf_counter() - start


def time_interleaved(steps: dict[str, Callable[[], Any]], repeats: int
                     ) -> dict[str, dict[str, float]]:
  """Times each step ``repeats`` times, alternating between them so that load from other
  processes on a shared machine hits every contender alike; median and best seconds."""
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, step in steps.items():
      times[name].append(_seconds(step))
  return {name: dict(median_s=statistics.median(t), best_s=min(t)) for name, t in times.items()}


def jax_steps(height: int, width: int, batch: int, dtype, model_width: int) -> dict:
  """Compiled, warmed-up fwjax forward and training steps (callables) for one size and dtype."""
  model = resnet.ResNet50(width=model_width, dtype=dtype)
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, height, width, 3), jnp.float32)
  labels = jax.random.randint(key, (batch,), 0, 1000)
  variables = jax.jit(model.init)(key, x[:1])
  tx = optax.sgd(0.01, momentum=0.9)

  def forward(variables, x):
    return model.apply(variables, x, train=False)[0]

  def train_step(state, x, labels):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      (logits, _), updates = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                         train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  out = {}
  start = time.perf_counter()
  fwd = jax.jit(forward).lower(variables, x).compile()
  out['forward_compile_s'] = time.perf_counter() - start
  out['forward_xla_flops'] = _xla_flops(fwd)
  jax.block_until_ready(fwd(variables, x))
  out['forward'] = lambda: jax.block_until_ready(fwd(variables, x))

  # A copy: the training step donates its state, and the forward step keeps using `variables`.
  state = jax.tree.map(jnp.copy, (variables['params'], variables['batch_stats'],
                                  tx.init(variables['params'])))
  start = time.perf_counter()
  step = jax.jit(train_step, donate_argnums=0).lower(state, x, labels).compile()
  out['train_compile_s'] = time.perf_counter() - start
  out['train_xla_flops'] = _xla_flops(step)
  holder = [step(state, x, labels)[0]]
  jax.block_until_ready(holder[0])

  def one_step():
    holder[0], loss = step(holder[0], x, labels)
    jax.block_until_ready(loss)

  out['train'] = one_step
  return out


def torch_steps(height: int, width: int, batch: int, bf16: bool, model_width: int) -> dict:
  """Warmed-up PyTorch (eager, channels_last) forward and training steps (callables).

  On a machine with CUDA, PyTorch runs on the GPU (cuDNN, TF32 allowed for float32 as JAX's
  default allows it), synchronising at the end of each step so host timers see the work done.
  """
  torch.manual_seed(0)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if device == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  model = _torch_resnet.ResNet50(width=model_width).to(device, memory_format=torch.channels_last)
  x = torch.randn(batch, 3, height, width, device=device).to(memory_format=torch.channels_last)
  labels = torch.randint(0, 1000, (batch,), device=device)
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
  out = {'device': device}

  def forward():
    model.eval()
    with torch.inference_mode(), autocast():
      model(x)
    sync()

  start = time.perf_counter()
  forward()
  out['forward_first_call_s'] = time.perf_counter() - start
  out['forward'] = forward

  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = torch.nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()
    sync()

  start = time.perf_counter()
  train_step()
  out['train_first_call_s'] = time.perf_counter() - start
  out['train'] = train_step
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default=','.join(f'{h}x{w}' for h, w in SIZES),
                      help='comma-separated HxW list')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='batch at 224x224 (scaled by pixels); default 8 on CPU, 256 on GPU')
  parser.add_argument('--torch_batch_size', type=int, default=8,
                      help='PyTorch (CPU) batch at 224x224; on a CPU run the JAX batch is used')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--width', type=int, default=64, help='ResNet width (64 = ResNet-50)')
  parser.add_argument('--peak_flops', type=float, default=989e12,
                      help='accelerator peak FLOP/s for the share column (dense bf16)')
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch columns')
  parser.add_argument('--quick', action='store_true',
                      help='224x224 and 352x144, batch 2, 2 repeats (a smoke run)')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  on_cpu = backend == 'cpu'
  sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes.split(',')]
  batch_224 = args.batch_size or (8 if on_cpu else 256)
  torch_224 = batch_224 if on_cpu else args.torch_batch_size
  repeats = args.repeats
  if args.quick:
    sizes, batch_224, torch_224, repeats = [(224, 224), (352, 144)], 2, 2, 2
  scaled = lambda b, h, w: max(1, round(b * 224 * 224 / (h * w)))
  use_torch = torch is not None and not args.no_torch
  if use_torch:
    torch.set_num_threads(os.cpu_count() or 1)

  load_start = os.getloadavg()  # Other processes on a shared machine skew timings.
  rows = []
  for height, width in sizes:
    for dtype_name in args.dtypes.split(','):
      dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype_name]
      batch = scaled(batch_224, height, width)
      row = dict(height=height, width=width, dtype=dtype_name, batch=batch)
      contenders = {'jax': jax_steps(height, width, batch, dtype, args.width)}
      if use_torch:
        row['torch_batch'] = scaled(torch_224, height, width)
        contenders['torch'] = torch_steps(height, width, row['torch_batch'],
                                          dtype_name == 'bfloat16', args.width)
      for mode in ('forward', 'train'):
        timings = time_interleaved({name: c[mode] for name, c in contenders.items()}, repeats)
        for name, c in contenders.items():
          images = batch if name == 'jax' else row['torch_batch']
          c[f'{mode}_images_per_s'] = images / timings[name]['median_s']
          c[f'{mode}_best_images_per_s'] = images / timings[name]['best_s']
      for name, c in contenders.items():
        row[name] = {k: v for k, v in c.items() if not callable(v)}
      for mode in ('forward', 'train'):
        flops = model_flops(height, width, mode == 'train') * (args.width / 64) ** 2
        row[f'{mode}_tflops_per_s'] = row['jax'][f'{mode}_images_per_s'] * flops / 1e12
        if not on_cpu:
          row[f'{mode}_peak_share'] = row[f'{mode}_tflops_per_s'] * 1e12 / args.peak_flops
      rows.append(row)
      print(f'done {height}x{width} {dtype_name}', flush=True)

  header = (f'{"size":>8} {"dtype":>8} {"mode":>7} {"batch":>5} {"compile_s":>9} {"jax img/s":>9} '
            f'{"torch img/s":>11} {"jax/torch":>9} {"best ratio":>10} {"TFLOP/s":>8} '
            f'{"xla/model":>9}' + ('' if on_cpu else f' {"peak%":>6}'))
  print(f'\nbackend={backend} device={jax.devices()[0].device_kind} '
        f'cpu_count={os.cpu_count()} torch={torch.__version__ if use_torch else "n/a"} '
        f'load average at start/end: {load_start} / {os.getloadavg()}')
  print(header)
  for row in rows:
    for mode in ('forward', 'train'):
      jax_ips = row['jax'][f'{mode}_images_per_s']
      torch_ips = row['torch'][f'{mode}_images_per_s'] if use_torch else float('nan')
      best = (row['jax'][f'{mode}_best_images_per_s'] / row['torch'][f'{mode}_best_images_per_s']
              if use_torch else float('nan'))
      xla = row['jax'][f'{mode}_xla_flops']
      model = model_flops(row['height'], row['width'], mode == 'train') * row['batch'] * (
          args.width / 64) ** 2
      line = (f'{row["height"]}x{row["width"]:<4} {row["dtype"]:>8} {mode:>7} {row["batch"]:>5} '
              f'{row["jax"][f"{mode}_compile_s"]:>9.1f} {jax_ips:>9.2f} {torch_ips:>11.2f} '
              f'{jax_ips / torch_ips:>9.2f} {best:>10.2f} {row[f"{mode}_tflops_per_s"]:>8.3f} '
              f'{(xla / model if xla else float("nan")):>9.2f}')
      if not on_cpu:
        line += f' {100 * row[f"{mode}_peak_share"]:>5.1f}%'
      print(line)
  if args.out:
    meta = dict(backend=backend, device=jax.devices()[0].device_kind, cpu_count=os.cpu_count(),
                machine=platform.processor() or platform.machine(), jax=jax.__version__,
                torch=torch.__version__ if use_torch else None, repeats=repeats,
                width=args.width, peak_flops=args.peak_flops, fwd_flops_224=FWD_FLOPS_224,
                load_average_start=load_start, load_average_end=os.getloadavg())
    with open(args.out, 'w') as f:
      json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
