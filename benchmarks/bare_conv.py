"""The bare convolutions of PreActResNet-18 in JAX (XLA:CPU) and in PyTorch, on the same CPU.

  python benchmarks/bare_conv.py --widths=16,64 --batch_size=128 --output=FILE.json

For every distinct convolution of the network (stem, 3x3 stage convolutions, strided 3x3 and
1x1 shortcut convolutions), at each width, it times the forward convolution alone and the
forward plus its backward (input and weight gradients) in both frameworks: JAX as a jitted
`lax.conv_general_dilated` in the models' layout (NHWC, HWIO) and its `jax.vjp`, PyTorch as
eager `F.conv2d` (NCHW) and `torch.autograd.grad`. Rounds are interleaved (JAX, PyTorch, then
the other order), the time is the median over rounds, and the network total weights each
convolution by how often the network has it. This separates the convolution kernels from
everything else in a training step (benchmarks/vs_pytorch.py, benchmarks/profile_step.py).

Writes FILE.json {"rows": [{"width", "shape": "HxW CinxCout kxk /s", "count", "pass":
"forward" | "forward+backward", "jax_seconds", "torch_seconds", "ratio"}], "totals": [{"width",
"pass", "jax_seconds", "torch_seconds", "ratio"}], versions, threads} and FILE.md. Ratios come
from one run on one machine; run it on a quiet machine. PyTorch is the optional `bench` extra.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('widths', ['16', '64'], 'PreActResNet-18 widths.')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
flags.DEFINE_integer('repeats', 3, 'Calls timed back to back per framework, case and round.')
flags.DEFINE_string('output', None, 'Where to write the JSON results (and the .md beside it).')


def network_convolutions(width: int) -> list[tuple[int, int, int, int, int, int]]:
  """(spatial size, C_in, C_out, kernel, stride, count) of every distinct convolution of the
  PreActResNet-18 of `width` on 32x32 inputs (models/preact_resnet.py)."""
  convs = [(32, 3, width, 3, 1, 1), (32, width, width, 3, 1, 4)]
  size, channels = 32, width
  for multiplier in (2, 4, 8):
    out = width * multiplier
    convs += [(size, channels, out, 3, 2, 1), (size, channels, out, 1, 2, 1),
              (size // 2, out, out, 3, 1, 3)]
    size, channels = size // 2, out
  return convs


def jax_calls(size, c_in, c_out, kernel, stride, batch):
  """(forward(), forward_backward()) of one convolution in JAX, each blocking on its result."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out)), jnp.float32)
  pad = kernel // 2

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  forward = jax.jit(conv)

  @jax.jit
  def forward_backward(x, w):
    out, pullback = jax.vjp(conv, x, w)
    return pullback(out)

  return (lambda: jax.block_until_ready(forward(x, w)),
          lambda: jax.block_until_ready(forward_backward(x, w)))


def torch_calls(size, c_in, c_out, kernel, stride, batch):
  """(forward(), forward_backward()) of the same convolution in eager PyTorch (NCHW)."""
  generator = torch.Generator().manual_seed(0)
  x = torch.randn((batch, c_in, size, size), generator=generator, requires_grad=True)
  w = torch.randn((c_out, c_in, kernel, kernel), generator=generator, requires_grad=True)

  def forward():
    with torch.no_grad():
      return F.conv2d(x, w, stride=stride, padding=kernel // 2)

  def forward_backward():
    out = F.conv2d(x, w, stride=stride, padding=kernel // 2)
    return torch.autograd.grad(out, (x, w), out)

  return forward, forward_backward


def seconds_per_call(call, repeats: int) -> float:
  """Mean wall seconds of `repeats` calls of call() back to back."""
  start = time.perf_counter()
  for _ in range(repeats):
    call()
  return (time.perf_counter() - start) / repeats


def compare(jax_call, torch_call) -> tuple[float, float]:
  """(JAX, PyTorch) median seconds per call over interleaved rounds, after a warm-up."""
  jax_call(), torch_call()
  times = {'jax': [], 'torch': []}
  for round_index in range(FLAGS.rounds):
    order = (('jax', jax_call), ('torch', torch_call))
    for name, call in order[::-1] if round_index % 2 else order:
      times[name].append(seconds_per_call(call, FLAGS.repeats))
  return statistics.median(times['jax']), statistics.median(times['torch'])


def table(rows: list[dict], totals: list[dict]) -> str:
  """Markdown: the network totals, then every convolution."""
  lines = ['| width | convolution (count) | pass | JAX ms | PyTorch ms | JAX / PyTorch |',
           '| --- | --- | --- | --- | --- | --- |']
  for row in totals + rows:
    what = f'{row["shape"]} ({row["count"]})' if 'shape' in row else 'all, weighted by count'
    lines.append(f'| {row["width"]} | {what} | {row["pass"]} | '
                 f'{1e3 * row["jax_seconds"]:.2f} | {1e3 * row["torch_seconds"]:.2f} | '
                 f'{row["ratio"]:.2f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  compilation.enable_cache()
  torch.set_num_threads(os.cpu_count())
  rows = []
  for width in map(int, FLAGS.widths):
    for size, c_in, c_out, kernel, stride, count in network_convolutions(width):
      pairs = zip(jax_calls(size, c_in, c_out, kernel, stride, FLAGS.batch_size),
                  torch_calls(size, c_in, c_out, kernel, stride, FLAGS.batch_size))
      for name, (jax_call, torch_call) in zip(('forward', 'forward+backward'), pairs):
        jax_seconds, torch_seconds = compare(jax_call, torch_call)
        rows.append({'width': width, 'count': count, 'pass': name,
                     'shape': f'{size}x{size} {c_in}x{c_out} {kernel}x{kernel} /{stride}',
                     'jax_seconds': jax_seconds, 'torch_seconds': torch_seconds,
                     'ratio': jax_seconds / torch_seconds})
        print(rows[-1])
  totals = []
  for width in map(int, FLAGS.widths):
    for name in ('forward', 'forward+backward'):
      chosen = [r for r in rows if r['width'] == width and r['pass'] == name]
      jax_total = sum(r['count'] * r['jax_seconds'] for r in chosen)
      torch_total = sum(r['count'] * r['torch_seconds'] for r in chosen)
      totals.append({'width': width, 'pass': name, 'jax_seconds': jax_total,
                     'torch_seconds': torch_total, 'ratio': jax_total / torch_total})
  print(table(rows, totals))
  if FLAGS.output:
    results = {'rows': rows, 'totals': totals, 'batch_size': FLAGS.batch_size,
               'rounds': FLAGS.rounds, 'repeats': FLAGS.repeats,
               'jax_version': jax.__version__, 'torch_version': torch.__version__,
               'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count()}
    step_cost.write_results(
        FLAGS.output, results,
        f'Bare convolutions of PreActResNet-18, batch {FLAGS.batch_size}: JAX {jax.__version__} '
        f'(jit, XLA:CPU) against PyTorch {torch.__version__} ({torch.get_num_threads()} '
        f'threads), median of {FLAGS.rounds} interleaved rounds.\n\n{table(rows, totals)}')


if __name__ == '__main__':
  app.run(main)
