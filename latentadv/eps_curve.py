"""Robust accuracy versus eps for one or more trained runs: a JSON record and a PNG plot.

  python -m latentadv.eps_curve --workdirs=runs/mnist_slat,runs/mnist_fgsm_rs \
      --eps=0.1,0.2,0.3 --suites=pgd,square --n_examples=1000 --output=eps_curve.png

Every (workdir, suite, eps) is an evaluation of the workdir's latest checkpoint on its first
n_examples test images with a suite of attacks/registry.py (settings from the workdir's
config.eval, overridable: --config.eval.pgd.restarts=2). The radii are in the threat model
config.eval.norm (--config.eval.norm=l2 for L2; every workdir must use the same). Writes the
plot to --output and the numbers next to it (same name, .json, with the norm). A workdir of
several seeds (config.num_seeds) gets a curve per seed, labelled "<workdir> (seed s)".
"""

import json
import os

import jax
import matplotlib
import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import checkpoint
from latentadv import compilation
from latentadv import evaluate
from latentadv import models
from latentadv import parallel
from latentadv import train_state
from latentadv.attacks import norms
from latentadv.attacks import registry
from latentadv.data import readers

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def curve(workdir: str, config: ml_collections.ConfigDict, suites: list[str],
          eps_values: list[float], seed_index: int | None = None) -> dict:
  """{'clean_accuracy': float, suite: [robust accuracy at each eps]} of one workdir (of its
  model seed_index in a run of several seeds).

  Evaluates the first config.eval.n_examples test examples (0 = all).
  """
  model, variables = train_state.restore_variables(workdir, config, seed_index=seed_index)
  seed = config.seed + (seed_index or 0)
  images, labels = readers.load_split(config.data, 'test', 0, 1)
  n = config.eval.n_examples or len(labels)
  mesh = parallel.make_mesh()
  result = {}
  for suite in suites:
    result[suite] = []
    for eps in eps_values:
      attacks = registry.build_suite(suite, config.eval, eps,
                                     has_quantiser=models.has_quantiser(model))
      evaluator = evaluate.Evaluator(
          model.apply, mesh, attacks, eps=eps, batch_size=config.eval.batch_size,
          surrogate_apply_fn=models.straight_through(model).apply)
      record = evaluator(variables, images[:n], labels[:n], jax.random.key(seed + 2))
      result['clean_accuracy'] = record['clean_accuracy']
      result[suite].append(record['robust_accuracy'])
      logging.info('%s %s eps %.4g: %.4f', workdir, suite, eps, record['robust_accuracy'])
  return result


def plot(curves: dict, eps_values: list[float], path: str, norm: str = 'linf'):
  """Saves a PNG: robust accuracy (%) vs eps (radii in `norm`, 'linf' or 'l2'), a colour per
  workdir, a line style per suite."""
  figure, axes = plt.subplots(figsize=(6, 4))
  styles = ['-', '--', ':', '-.']
  for colour, (workdir, result) in enumerate(curves.items()):
    suites = [key for key in result if key != 'clean_accuracy']
    for i, suite in enumerate(suites):
      axes.plot([0.0, *eps_values], [100 * result['clean_accuracy'],
                                     *[100 * a for a in result[suite]]],
                styles[i % len(styles)], marker='o', color=f'C{colour}',
                label=f'{os.path.basename(os.path.normpath(workdir))} ({suite})')
  axes.set_xlabel(f'eps ({norms.LABELS[norm]}, pixel units)')
  axes.set_ylabel('robust accuracy (%)')
  axes.set_ylim(0, 100)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def _main(argv):
  del argv
  compilation.enable_cache()
  eps_values = [float(e) for e in FLAGS.eps]
  overrides = config_flags.get_override_values(FLAGS['config'])
  overrides['eval.n_examples'] = FLAGS.n_examples
  configs = {workdir: evaluate.workdir_config(workdir, base_config.get_config(), overrides)
             for workdir in FLAGS.workdirs}
  norm, *others = sorted({config.eval.norm for config in configs.values()})
  if others:
    raise app.UsageError(f'The workdirs evaluate in different norms ({norm}, '
                         f'{", ".join(others)}): set one with --config.eval.norm.')
  curves = {}
  for workdir, config in configs.items():
    if config.num_seeds == 1:
      curves[workdir] = curve(workdir, config, FLAGS.suites, eps_values)
    else:
      for k in range(config.num_seeds):
        curves[f'{workdir} (seed {config.seed + k})'] = curve(workdir, config, FLAGS.suites,
                                                              eps_values, k)
  if jax.process_index() == 0:
    checkpoint.write_json_atomically(os.path.splitext(FLAGS.output)[0] + '.json',
                                     {'eps': eps_values, 'norm': norm,
                                      'n_examples': FLAGS.n_examples, 'curves': curves})
    plot(curves, eps_values, FLAGS.output, norm)
  logging.info('%s', json.dumps(curves, indent=2))


if __name__ == '__main__':
  from latentadv import base_config  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  flags.DEFINE_list('workdirs', None, 'Training runs (directories with config.json).')
  flags.DEFINE_list('eps', None, 'Radii in pixel units in config.eval.norm, e.g. 0.1,0.2,0.3.')
  flags.DEFINE_list('suites', ['pgd'], 'Attack suites of latentadv/attacks/registry.py.')
  flags.DEFINE_integer('n_examples', 1000, 'First n test examples (0 = all).')
  flags.DEFINE_string('output', 'eps_curve.png', 'PNG path; the JSON goes next to it.')
  flags.mark_flags_as_required(['workdirs', 'eps'])
  config_flags.DEFINE_config_dict('config', base_config.get_config(),
                                  'Overrides of the saved configs, e.g. --config.eval.pgd.steps=20.')
  app.run(_main)
