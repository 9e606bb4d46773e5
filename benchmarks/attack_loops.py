r"""Rolled against unrolled attack loops, with the models' convolution and with JAX's own rule.

  python benchmarks/attack_loops.py --model=preact_resnet18 --width=16 --batch_size=64 \
      --steps=20 --output=benchmarks/results/attack_loops_cpu.json

Times APGD-CE (`--steps` steps, cross-entropy, L-inf 8/255) on random images in [0, 1] with
random labels against a randomly initialised model (the cost of a step does not depend on the
weights), in four variants: the loop rolled (`lax.fori_loop`) or unrolled, and the input
gradient from the models' convolution (models/convolution.py: on the cpu backend, a custom VJP
whose input-gradient convolution takes the library kernel) or from JAX's own rule
(`convolution.library_input_gradient` replaced by False while that variant is traced). Each
variant is compiled once (the persistent compilation cache is off here, so compile seconds are
cold) and then timed in interleaved rounds (variant A, B, C, D, A, ...; median of --rounds).

Writes FILE.json {"runs": [{"convolution", "loop", "compile_seconds", "seconds" (one attack),
"seconds_per_step", "relative" (to the rolled loop with the models' convolution)}], "model",
"width", "batch_size", "steps", "rounds", "jax_backend", "jax_version"} and FILE.md (a table).
"""

import json
import os
import statistics
import sys
import time
from unittest import mock

import jax
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from latentadv import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.attacks import apgd
from latentadv.models import convolution

FLAGS = flags.FLAGS
flags.DEFINE_enum('model', 'preact_resnet18', ['preact_resnet18', 'mnist_cnn'], 'Model.')
flags.DEFINE_integer('width', 16, 'PreActResNet-18 width.')
flags.DEFINE_integer('batch_size', 64, 'Images per attack.')
flags.DEFINE_integer('steps', 20, 'APGD steps.')
flags.DEFINE_integer('rounds', 3, 'Interleaved timing rounds.')
flags.DEFINE_string('output', None, 'Where to write the JSON (and .md) results.')

VARIANTS = (('models', 'rolled'), ('models', 'unrolled'), ('jax', 'rolled'), ('jax', 'unrolled'))
EPS = 8 / 255


def build(model_name: str, width: int):
  """(apply_fn, image shape, classes) of a randomly initialised model."""
  if model_name == 'mnist_cnn':
    model = models.create_model('mnist_cnn', {}, num_classes=10, mean=(0.5,), std=(0.5,))
    shape = (28, 28, 1)
  else:
    model = models.create_model('preact_resnet18', {'width': width}, num_classes=10,
                                mean=(0.5,) * 3, std=(0.25,) * 3)
    shape = (32, 32, 3)
  variables = models.init_variables(model, jax.random.key(0), (1, *shape))
  return lambda x: model.apply(variables, x, train=False), shape


def compiled_attack(logits_fn, x, y, conv: str, loop: str):
  """(executable of APGD-CE on (x, y, key), compile seconds) for one variant."""
  def attack(x, y, rng):
    return apgd.apgd(logits_fn, x, y, rng, eps=EPS, steps=FLAGS.steps,
                     unroll=loop == 'unrolled')

  start = time.perf_counter()
  with mock.patch.object(convolution, 'library_input_gradient',
                         convolution.library_input_gradient if conv == 'models'
                         else lambda _: False):
    executable = jax.jit(attack).lower(x, y, jax.random.key(1)).compile()
  return executable, time.perf_counter() - start


def table(runs: list[dict]) -> str:
  """Markdown table of the runs."""
  lines = ['| input gradient | loop | compile s | s per attack | s per step | relative |',
           '|' + ' --- |' * 6]
  for run in runs:
    lines.append(f'| {run["convolution"]} | {run["loop"]} | {run["compile_seconds"]:.1f} | '
                 f'{run["seconds"]:.2f} | {run["seconds_per_step"]:.3f} | '
                 f'{run["relative"]:.2f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  jax.config.update('jax_enable_compilation_cache', False)
  logits_fn, shape = build(FLAGS.model, FLAGS.width)
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.random((FLAGS.batch_size, *shape), np.float32))
  y = jax.numpy.asarray(rng.integers(0, 10, FLAGS.batch_size))
  executables, compile_seconds = {}, {}
  for variant in VARIANTS:
    executables[variant], compile_seconds[variant] = compiled_attack(logits_fn, x, y, *variant)
    jax.block_until_ready(executables[variant](x, y, jax.random.key(1)))
    print(f'{variant}: compiled in {compile_seconds[variant]:.1f} s', flush=True)
  times = {variant: [] for variant in VARIANTS}
  for round_ in range(FLAGS.rounds):
    for variant in VARIANTS:
      start = time.perf_counter()
      jax.block_until_ready(executables[variant](x, y, jax.random.key(2 + round_)))
      times[variant].append(time.perf_counter() - start)
  base = statistics.median(times[VARIANTS[0]])
  runs = [{'convolution': conv, 'loop': loop, 'compile_seconds': compile_seconds[(conv, loop)],
           'seconds': statistics.median(times[(conv, loop)]),
           'seconds_per_step': statistics.median(times[(conv, loop)]) / FLAGS.steps,
           'relative': statistics.median(times[(conv, loop)]) / base}
          for conv, loop in VARIANTS]
  print(table(runs))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump({'runs': runs, 'model': FLAGS.model, 'width': FLAGS.width,
                 'batch_size': FLAGS.batch_size, 'steps': FLAGS.steps, 'rounds': FLAGS.rounds,
                 'jax_backend': jax.default_backend(), 'jax_version': jax.__version__}, f,
                indent=2)
    with open(os.path.splitext(FLAGS.output)[0] + '.md', 'w') as f:
      f.write(f'APGD-CE, {FLAGS.steps} steps, {FLAGS.model} (width {FLAGS.width}), batch '
              f'{FLAGS.batch_size}, {jax.default_backend()} (JAX {jax.__version__}); median of '
              f'{FLAGS.rounds} interleaved rounds; relative to the rolled loop with the '
              f'models\' convolution.\n\n{table(runs)}\n')


if __name__ == '__main__':
  app.run(main)
