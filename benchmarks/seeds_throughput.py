"""K seeds in one program against K single runs: throughput of the training step.

  python benchmarks/seeds_throughput.py --num_seeds=1,2,4 --width=16 --output=FILE.json
  python benchmarks/seeds_throughput.py --num_seeds=1,2,4,8 --width=64 --dtypes=float32,bfloat16 \
      --peak_tflops=989 --output=FILE.json     # e.g. an H200's dense bf16/TF32 rate

For each model dtype, seed loop (config.seed_loop: 'vmap', 'unroll') and K, it compiles the
method's (default SLAT, configs/cifar_slat.py) training step of K models side by side
(config.num_seeds = K; latentadv/seeds.py; K = 1 is the single run's step) on a fixed
random batch (--batch_size per model), then times all of them in interleaved rounds (K = 1, 2,
4, ..., 1, 2, 4, ...) so that machine noise hits each alike, and reports the median seconds per
step. K single runs one after another cost K times the K = 1 step, so
  speedup = K * seconds(K = 1) / seconds(K)
is the gain of one K-seed program over K single runs (> 1: the program is faster). Also per K:
images/s per model (batch / seconds), total images/s (K * batch / seconds), the step's FLOPs
from XLA's cost analysis of the compiled program, the FLOP rate achieved and, with
--peak_tflops, its fraction of that peak.

Writes FILE.json ({"runs": [{"dtype", "seed_loop", "num_seeds", "seconds", "speedup", "images_per_second_per_model",
"total_images_per_second", "flops", "tflops_per_second", "peak_fraction"}], settings}) and
FILE.md (the same table).
"""

import os
import statistics
import sys

import jax
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import parallel

FLAGS = flags.FLAGS
flags.DEFINE_string('method', 'slat', 'Method (its configs/cifar_<method>.py recipe).')
flags.DEFINE_list('num_seeds', ['1', '2', '4'], 'Values of K to compare.')
flags.DEFINE_list('dtypes', ['float32'], 'Model compute dtypes (float32, bfloat16).')
flags.DEFINE_list('seed_loops', ['vmap', 'unroll'], 'How the K models run (config.seed_loop).')
flags.DEFINE_integer('width', 16, 'PreActResNet-18 width (64: the paper model).')
flags.DEFINE_integer('batch_size', 128, 'Batch size of each model.')
flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
flags.DEFINE_integer('steps_per_round', 3, 'Steps timed back to back per K and round.')
flags.DEFINE_float('peak_tflops', 0.0, 'The device\'s peak rate in TFLOP/s for the dtype, '
                   'to report the fraction achieved (0 = not reported).')
flags.DEFINE_string('output', None, 'Where to write the JSON (and .md) results.')


def step_flops(entry: list) -> float:
  """FLOPs of one call of entry = [step, state, batch, rng] by XLA's cost analysis (0 if the
  backend reports none)."""
  step, state, batch, rng = entry
  analysis = step.lower(state, batch, rng).compile().cost_analysis()
  if isinstance(analysis, list):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def table(runs: list[dict]) -> str:
  """Markdown table of the runs."""
  lines = ['| dtype | seed loop | K | s / step | speedup vs K single runs | images/s per model '
           '| total images/s | TFLOP/s | fraction of peak |', '|' + ' --- |' * 9]
  for run in runs:
    fraction = f'{run["peak_fraction"]:.3f}' if run['peak_fraction'] is not None else '-'
    lines.append(f'| {run["dtype"]} | {run["seed_loop"]} | {run["num_seeds"]} | '
                 f'{run["seconds"]:.4f} | '
                 f'{run["speedup"]:.2f} | {run["images_per_second_per_model"]:.0f} | '
                 f'{run["total_images_per_second"]:.0f} | {run["tflops_per_second"]:.3f} | '
                 f'{fraction} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  mesh = parallel.make_mesh()
  counts = sorted({int(k) for k in FLAGS.num_seeds} | {1})
  entries = {}
  for dtype in FLAGS.dtypes:
    for loop in FLAGS.seed_loops:
      for count in counts:
        if count == 1 and (dtype, 'single', 1) in entries:
          continue
        config = step_cost.make_config(FLAGS.method, 'preact_resnet18', FLAGS.width,
                                       FLAGS.batch_size)
        config.model.dtype = dtype
        config.num_seeds, config.seed_loop = count, loop
        images, labels = step_cost.random_batch(config, FLAGS.batch_size)
        entries[dtype, 'single' if count == 1 else loop, count] = list(
            step_cost.compiled_step(config, mesh, images, labels))
  flops = {key: step_flops(entry) for key, entry in entries.items()}
  times = {key: [] for key in entries}
  for _ in range(FLAGS.rounds):
    for key, entry in entries.items():
      times[key].append(step_cost.time_steps(entry, FLAGS.steps_per_round))
  runs = []
  for (dtype, loop, count), samples in times.items():
    seconds = statistics.median(samples)
    single = statistics.median(times[dtype, 'single', 1])
    rate = flops[dtype, loop, count] / seconds / 1e12
    runs.append({
        'dtype': dtype, 'seed_loop': loop, 'num_seeds': count, 'seconds': seconds,
        'speedup': count * single / seconds,
        'images_per_second_per_model': FLAGS.batch_size / seconds,
        'total_images_per_second': count * FLAGS.batch_size / seconds,
        'flops': flops[dtype, loop, count], 'tflops_per_second': rate,
        'peak_fraction': rate / FLAGS.peak_tflops if FLAGS.peak_tflops else None,
        'seconds_per_round': samples})
  results = {'method': FLAGS.method, 'width': FLAGS.width, 'batch_size': FLAGS.batch_size,
             'rounds': FLAGS.rounds, 'steps_per_round': FLAGS.steps_per_round,
             'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
             'cpu_count': os.cpu_count(), 'peak_tflops': FLAGS.peak_tflops or None,
             'runs': runs}
  print(table(runs))
  if FLAGS.output:
    step_cost.write_results(FLAGS.output, results, table(runs))


if __name__ == '__main__':
  app.run(main)
