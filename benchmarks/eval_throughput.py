"""Attack throughput (examples x iterations per second) of our PGD next to foolbox's.

  python benchmarks/eval_throughput.py --workdir=runs/mnist_fgsm_rs --output=throughput.json

Both attack the same model (the latest checkpoint of --workdir; or, without it, a freshly
initialised MNIST CNN: throughput does not depend on the weights) on the same batches of
MNIST test images: our `attacks.pgd.fooled_in_restart` jitted, and foolbox's LinfPGD on a
jitted foolbox.JAXModel, `steps` iterations each, one restart. Both are compiled or warmed up
first, then timed in interleaved rounds; the median round is reported. Also reports both
robust accuracies on those batches (ours counts every iterate, foolbox the last).
"""

import functools
import json
import os
import sys
import time

import foolbox
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from latentadv import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.attacks import pgd  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.data import readers  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', '', 'Trained run to attack ("" = an initialised MNIST CNN).')
flags.DEFINE_string('data_dir', '../shared/data/mnist', 'MNIST canonical files.')
flags.DEFINE_float('eps', 0.3, 'L-inf radius.')
flags.DEFINE_integer('steps', 50, 'PGD iterations.')
flags.DEFINE_integer('batch_size', 500, 'Examples per batch.')
flags.DEFINE_integer('rounds', 3, 'Timed rounds (one batch per attack each).')
flags.DEFINE_string('output', '', 'Write the record as JSON here.')


def _logits_fn(workdir: str, config: ml_collections.ConfigDict):
  """Jittable logits (B, 10) of the workdir's model, or of a fresh MNIST CNN."""
  if workdir:
    model, variables = train_state.restore_variables(workdir, config)
  else:
    model = train_state.build_model(config)
    variables = models.init_variables(model, jax.random.key(0), (1, 28, 28, 1))
  return functools.partial(model.apply, variables, train=False)


def main(argv):
  del argv
  compilation.enable_cache()
  config = base_config.get_config()
  if FLAGS.workdir:
    config = evaluate.workdir_config(FLAGS.workdir, config, {})
  else:
    config.data.name, config.model.name = 'mnist', 'mnist_cnn'
  config.data.source, config.data.dir = 'local', FLAGS.data_dir
  images, labels = readers.load_split(config.data, 'test', 0, 1)
  logits_fn = jax.jit(_logits_fn(FLAGS.workdir, config))
  eps, steps, size = FLAGS.eps, FLAGS.steps, FLAGS.batch_size
  ours = jax.jit(functools.partial(pgd.fooled_in_restart, logits_fn, eps=eps,
                                   step_size=eps / 4, steps=steps))
  fmodel = foolbox.JAXModel(logits_fn, bounds=(0, 1))
  theirs = foolbox.attacks.LinfPGD(steps=steps, abs_stepsize=eps / 4, random_start=True)

  def run_ours(x, y, rng):
    return ~np.asarray(ours(x, y, rng)) & (np.asarray(logits_fn(x)).argmax(-1) == y)

  def run_theirs(x, y, rng):
    del rng
    success = np.asarray(theirs(fmodel, x, y, epsilons=eps)[2])
    return ~success & (np.asarray(logits_fn(x)).argmax(-1) == y)

  attacks = {'latentadv_pgd': run_ours, 'foolbox_linf_pgd': run_theirs}
  seconds = {name: [] for name in attacks}
  robust = {name: [] for name in attacks}
  for r in range(FLAGS.rounds + 1):  # Round 0 compiles / warms up and is not timed.
    x = jnp.asarray(images[r * size:(r + 1) * size])
    y = jnp.asarray(labels[r * size:(r + 1) * size])
    for name, attack in attacks.items():
      start = time.perf_counter()
      result = attack(x, y, jax.random.key(r))
      if r:
        seconds[name].append(time.perf_counter() - start)
        robust[name].append(float(result.mean()))
  record = {'model': config.model.name, 'workdir': FLAGS.workdir, 'eps': eps, 'steps': steps,
            'batch_size': size, 'rounds': FLAGS.rounds, 'devices': jax.device_count()}
  for name in attacks:
    median = float(np.median(seconds[name]))
    record[name] = {'median_seconds': median,
                    'examples_x_iterations_per_second': size * steps / median,
                    'robust_accuracy': float(np.mean(robust[name]))}
  record['speedup'] = (record['foolbox_linf_pgd']['median_seconds']
                       / record['latentadv_pgd']['median_seconds'])
  print(json.dumps(record, indent=2))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(record, f, indent=2)


if __name__ == '__main__':
  app.run(main)
