"""The robustness evaluator: clean and PGD-k-r accuracy of a model, sharded like training.

Library: `Evaluator(...)(variables, images, labels, rng)`; `load_model(workdir)`.
Command line: `python -m latentadv.evaluate --workdir=DIR [--config.eval.pgd_steps=...]`
evaluates the latest checkpoint in DIR with the config saved there (overridable) and writes
`DIR/eval_pgd.json`.
"""

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import checkpoint
from latentadv import data
from latentadv import parallel
from latentadv import state as state_lib
from latentadv.attacks import pgd


class Evaluator:
  """Counts clean and PGD-robust examples with jitted, data-sharded functions.

  PGD: `steps` sign steps of `step_size` in the L-inf ball of radius `eps`, `restarts` random
  starts, loss 'ce' or 'margin'; an example is robust only if no iterate of any restart
  fools the model (see attacks/pgd.py).
  """

  def __init__(self, apply_fn, mesh, *, eps: float, steps: int, restarts: int,
               step_size: float, loss: str, batch_size: int):
    self.settings = dict(attack='pgd', eps=eps, steps=steps, restarts=restarts,
                         step_size=step_size, loss=loss)
    self._mesh = mesh
    self._local_batch = parallel.check_batch_size(batch_size, 'config.eval.batch_size', mesh)

    def correct(variables, image, label):
      return apply_fn(variables, image, train=False).argmax(-1) == label

    def fooled(variables, image, label, rng):
      return pgd.fooled_in_restart(functools.partial(apply_fn, variables, train=False), image,
                                   label, rng, eps=eps, step_size=step_size, steps=steps,
                                   loss=loss)

    self._correct = jax.jit(correct)
    self._fooled = jax.jit(fooled)

  def _robust_and_correct(self, variables, batch, rng) -> tuple[int, int]:
    """(clean-correct, robust) counts of one global batch; restarts stop once none is robust."""
    correct = self._correct(variables, batch['image'], batch['label']) & batch['mask']
    robust = correct
    for r in range(self.settings['restarts']):
      if not jax.device_get(robust.any()):
        break
      robust &= ~self._fooled(variables, batch['image'], batch['label'],
                              jax.random.fold_in(rng, r))
    return int(jax.device_get(correct.sum())), int(jax.device_get(robust.sum()))

  def __call__(self, variables, images: np.ndarray, labels: np.ndarray, rng: jax.Array) -> dict:
    """Evaluates on all of images (N, H, W, C) in [0, 1] / labels (N,); returns a record.

    Every process passes the same arrays; each evaluates its contiguous share.
    """
    start = time.perf_counter()
    index, count = jax.process_index(), jax.process_count()
    local_images = np.array_split(images, count)[index]
    local_labels = np.array_split(labels, count)[index]
    num_batches = data.eval_num_batches(len(labels), count, self._local_batch)
    variables = jax.device_put(variables, parallel.replicated(self._mesh))
    totals = np.zeros(2, np.int64)
    for i, batch in enumerate(data.eval_batches(local_images, local_labels, self._local_batch,
                                                num_batches)):
      totals += self._robust_and_correct(variables, parallel.global_batch(batch, self._mesh),
                                         jax.random.fold_in(rng, i))
    n = len(labels)
    return {'clean_accuracy': float(totals[0] / n), 'pgd_accuracy': float(totals[1] / n),
            'n_examples': n, 'seconds': time.perf_counter() - start, **self.settings}


def from_config(apply_fn, mesh, config: ml_collections.ConfigDict, *, steps: int,
                restarts: int) -> Evaluator:
  """An Evaluator with config.method.eps and config.eval's step size, loss and batch size."""
  return Evaluator(apply_fn, mesh, eps=config.method.eps, steps=steps, restarts=restarts,
                   step_size=config.eval.step_size * config.method.eps, loss=config.eval.loss,
                   batch_size=config.eval.batch_size)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a latentadv workdir (train '
                            'into it with `python -m latentadv.main --workdir=...` first).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_model(workdir: str):
  """Returns a jittable `logits = f(x)` for the latest checkpoint in `workdir`.

  x: (B, H, W, C) float32 in [0, 1] (the model normalises internally); logits: (B, classes).
  """
  model, variables = state_lib.restore_variables(workdir, load_config(workdir))
  return functools.partial(model.apply, variables, train=False)


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """PGD evaluation of the latest checkpoint in `workdir` per `config.eval`; writes JSON."""
  model, variables = state_lib.restore_variables(workdir, config)
  images, labels = data.load_split(config.data, 'test', 0, 1)
  n = config.eval.n_examples or len(labels)
  evaluator = from_config(model.apply, parallel.make_mesh(), config,
                          steps=config.eval.pgd_steps, restarts=config.eval.pgd_restarts)
  result = evaluator(variables, images[:n], labels[:n], jax.random.key(config.seed + 2))
  checkpoint.write_json_atomically(os.path.join(workdir, 'eval_pgd.json'), result)
  return result


def _apply_overrides(config: ml_collections.ConfigDict, overrides: dict):
  """Sets each 'a.b.c' key of `overrides` in `config`."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value


def _main(argv):
  del argv
  config = load_config(FLAGS.workdir)
  _apply_overrides(config, config_flags.get_override_values(FLAGS['config']))
  validation.validate(config)
  result = evaluate_workdir(FLAGS.workdir, config)
  logging.info('%s', json.dumps(result, indent=2))


if __name__ == '__main__':
  from configs import default  # pylint: disable=g-import-not-at-top
  from latentadv import validation  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  flags.DEFINE_string('workdir', None, 'Directory of a training run (with config.json).')
  flags.mark_flag_as_required('workdir')
  config_flags.DEFINE_config_dict(
      'config', default.get_config(),
      'Overrides of the saved config, e.g. --config.eval.n_examples=1000.')
  app.run(_main)
