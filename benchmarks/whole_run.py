"""Images per second of a complete training run against the training step alone, in one run.

  python benchmarks/whole_run.py --data_dir=../shared/data/cifar10 \
      --output=benchmarks/results/whole_run.json

Trains `configs/cifar_slat.py:cpu` (PreActResNet-18 width 16, 10,000 images, batch 128) with
the real trainer (data feeding, host loop, metric fetches, checkpoints, per-epoch history;
the periodic and final evaluations are not training time and are excluded, as in
results.json), and times the same compiled step alone on a fixed device batch before and after
it (median of --rounds rounds of --steps_per_round steps each). Reports images/s of: the step
alone; the whole run (results.json's train_seconds, the first step's compilation included);
and the whole run after its first epoch (epochs 2..E from the per-epoch history, no
compilation). The gap is 1 - whole / step.
"""

import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar_slat
from latentadv import compilation
from latentadv import parallel
from latentadv import train
from latentadv.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', '', 'Directory of the CIFAR-10 binary files.')
flags.DEFINE_string('pipeline', 'memory', "config.data.pipeline: 'memory' or 'stream'.")
flags.DEFINE_integer('epochs', 10, 'Training epochs of the whole run.')
flags.DEFINE_integer('rounds', 5, 'Step-only timing rounds, before and after the run each.')
flags.DEFINE_integer('steps_per_round', 10, 'Steps per step-only round.')
flags.DEFINE_string('output', None, 'Where to write the JSON results (and .md beside it).')


def step_only_seconds(entry: list) -> list[float]:
  """Seconds per step of --rounds rounds of the compiled step (a step_cost entry)."""
  return [step_cost.time_steps(entry, FLAGS.steps_per_round) for _ in range(FLAGS.rounds)]


def main(argv):
  del argv
  compilation.enable_cache()
  config = cifar_slat.get_config('cpu')
  config.data.source, config.data.dir = 'local', FLAGS.data_dir
  if FLAGS.pipeline != 'memory':
    config.data.pipeline = FLAGS.pipeline
  config.optim.epochs = FLAGS.epochs
  config.eval.n_examples = 100
  config.eval.periodic_n_examples = 100
  batch_size = config.optim.batch_size
  images, labels = readers.load_split(config.data, 'train')
  entry = list(step_cost.compiled_step(config, parallel.make_mesh(), images[:batch_size],
                                       labels[:batch_size]))
  before = step_only_seconds(entry)
  with tempfile.TemporaryDirectory() as workdir:
    results = train.train_and_evaluate(config, workdir)
  after = step_only_seconds(entry)
  history = results['history']
  steps_per_epoch = results['steps'] // FLAGS.epochs
  later_seconds = history[-1]['train_seconds'] - history[0]['train_seconds']
  step_seconds = statistics.median(before + after)
  rates = {
      'step_only': batch_size / step_seconds,
      'whole_run': results['images_per_second'],
      'whole_run_after_epoch_1': (FLAGS.epochs - 1) * steps_per_epoch * batch_size / later_seconds,
  }
  summary = {'config': 'configs/cifar_slat.py:cpu', 'pipeline': FLAGS.pipeline,
             'epochs': FLAGS.epochs, 'batch_size': batch_size,
             'step_seconds_before': before, 'step_seconds_after': after,
             'train_seconds': results['train_seconds'], 'images_per_second': rates,
             'gap_whole_run': 1 - rates['whole_run'] / rates['step_only'],
             'gap_after_epoch_1': 1 - rates['whole_run_after_epoch_1'] / rates['step_only']}
  markdown = '\n'.join([
      f'| SLAT, cifar_slat.py:cpu, {FLAGS.pipeline} pipeline | images/s | vs step only |',
      '| --- | --- | --- |',
      f'| step only (median of {2 * FLAGS.rounds} rounds) | {rates["step_only"]:.0f} | 1 |',
      f'| whole run, {FLAGS.epochs} epochs (compilation included) | {rates["whole_run"]:.0f} | '
      f'{rates["whole_run"] / rates["step_only"]:.3f} |',
      f'| whole run after epoch 1 | {rates["whole_run_after_epoch_1"]:.0f} | '
      f'{rates["whole_run_after_epoch_1"] / rates["step_only"]:.3f} |'])
  print(markdown)
  if FLAGS.output:
    step_cost.write_results(FLAGS.output, summary, markdown)


if __name__ == '__main__':
  app.run(main)
