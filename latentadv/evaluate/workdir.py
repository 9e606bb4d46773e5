"""Evaluating a training run's workdir: its saved config, its model, its eval files.

`evaluate_workdir` evaluates the run's model with config.eval.suite (attacks/registry.py) on
the first config.eval.n_examples test examples, in the threat model config.eval.norm with
radius config.method.eps, the attacks keyed by config.seed + 2 (config.seed + k + 2 for the
model of seed index k), and writes `<workdir>/eval_<suite>.json` (accuracies, settings,
n examples, compile and run seconds, also per attack) and `eval_<suite>.npz` (per example:
index, label, correct, robust, fooled_by_<attack>, and for FAB-T fab_linf_norm or fab_l2_norm:
the smallest norm of the adversarial points its runs found, inf where they found none or
where FAB-T never ran because the point was misclassified or fooled by an earlier attack).

While it runs, `eval_<suite>.progress.npz` holds the verdicts of its finished batches
(evaluate/progress.py): a rerun of the same workdir, suite, settings and seed continues from
them and writes the files an uninterrupted evaluation writes.
"""

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from latentadv import checkpoint
from latentadv import models
from latentadv import parallel
from latentadv import seeds
from latentadv import train_state
from latentadv import validation
from latentadv.attacks import norms
from latentadv.attacks import registry
from latentadv.data import readers
from latentadv.evaluate import progress as progress_lib
from latentadv.evaluate.evaluator import Evaluator

_LABELS = {'autoattack': 'AutoAttack-style worst case, JAX port (APGD-CE, APGD-T, FAB-T, '
                         'Square)'}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a latentadv workdir (train '
                            'into it with `python -m latentadv.main --workdir=...` first).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_model(workdir: str, state: str = 'kept', seed_index: int | None = None):
  """Returns a jittable `logits = f(x)` for the run's kept state in `workdir` (the best state
  where training collapsed, else the last; `state='last'` for the latest checkpoint). A run of
  K > 1 seeds (config.num_seeds) needs seed_index in [0, K): the model of seed config.seed + k.

  x: (B, H, W, C) float32 in [0, 1] (the model normalises internally); logits: (B, classes).
  """
  model, variables = train_state.restore_variables(workdir, load_config(workdir), state,
                                                   seed_index)
  return functools.partial(model.apply, variables, train=False)


def _set_leaves(config: ml_collections.ConfigDict, values: dict, path: str, prefix: str = ''):
  """Sets every leaf of the nested dict `values` (the config saved at `path`) in `config`;
  raises ConfigError for a key `config` does not have."""
  for key, value in values.items():
    if key not in config:
      raise validation.ConfigError(
          f'{path} has config.{prefix}{key}, which this version of latentadv does not know: '
          'the run was trained by another version. Evaluate it with that version, or train '
          'it again.')
    if isinstance(value, dict):
      _set_leaves(config[key], value, path, f'{prefix}{key}.')
    else:
      config[key] = value


def _apply_overrides(config: ml_collections.ConfigDict, overrides: dict):
  """Sets each 'a.b.c' key of `overrides` in `config`."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value


def workdir_config(workdir: str, base: ml_collections.ConfigDict,
                   overrides: dict) -> ml_collections.ConfigDict:
  """`base` (a default config) with the values saved in `workdir`, then `overrides`
  ({'a.b.c': value}) applied, validated."""
  config = ml_collections.ConfigDict(base.to_dict())
  _set_leaves(config, load_config(workdir).to_dict(), os.path.join(workdir, 'config.json'))
  _apply_overrides(config, overrides)
  validation.validate(config)
  return config


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict,
                     state: str = 'kept', seed_index: int | None = None) -> dict:
  """Evaluates the run's `state` in `workdir` ('kept': the best state where training collapsed,
  else the last; 'last': the latest checkpoint) as the module docstring says; writes
  eval_<suite>.json and .npz (eval_<suite>_last.* for 'last') and returns the record.

  A run of K > 1 seeds: seed index k alone with seed_index = k (files eval_<suite>_seed<k>.*),
  else every seed, each written as it finishes, then eval_<suite>.json with every seed's record
  ('seeds') and their mean and std ('summary').
  """
  if config.eval.norm != config.method.norm:
    logging.warning('Evaluating in %s (config.eval.norm) a run trained in %s: eps = '
                    'config.method.eps = %g is read as an %s radius.',
                    norms.LABELS[config.eval.norm], norms.LABELS[config.method.norm],
                    config.method.eps, norms.LABELS[config.eval.norm])
  name = f'eval_{config.eval.suite}' + ('_last' if state == 'last' else '')
  model = train_state.build_model(config)
  attacks = registry.build_suite(config.eval.suite, config.eval, config.method.eps,
                                 has_quantiser=models.has_quantiser(model))
  # One evaluator for every seed: each program compiles once.
  evaluator = Evaluator(model.apply, parallel.make_mesh(), attacks, eps=config.method.eps,
                        batch_size=config.eval.batch_size,
                        surrogate_apply_fn=models.straight_through(model).apply)
  test_split = readers.eval_split(config.data, 'test', config.eval.n_examples)
  if config.num_seeds == 1 or seed_index is not None:
    train_state.check_seed_index(config, seed_index)
    return _evaluate_seed(workdir, config, state, seed_index, name, evaluator, test_split)
  records = [_evaluate_seed(workdir, config, state, k, name, evaluator, test_split)
             for k in range(config.num_seeds)]
  record = {key: records[0][key] for key in ('suite', 'label', 'norm', 'state', 'n_examples',
                                             'eps')}
  record.update(num_seeds=config.num_seeds, seeds=records, summary={
      key: seeds.mean_std([r[key] for r in records])
      for key in ('clean_accuracy', 'robust_accuracy')})
  checkpoint.write_json_atomically(os.path.join(workdir, f'{name}.json'), record)
  logging.info('%s over %d seeds: %s', config.eval.suite, config.num_seeds, record['summary'])
  return record


def _evaluate_seed(workdir: str, config: ml_collections.ConfigDict, state: str,
                   seed_index: int | None, name: str, evaluator: Evaluator,
                   test_split: tuple[np.ndarray, np.ndarray]) -> dict:
  """evaluate_workdir of one model (seed index `seed_index`, None for a single-seed run) with
  `evaluator` on test_split (images (N, H, W, C), labels (N,)), written to <name>.json/.npz
  (<name>_seed<k>.* for seed index k), resumable from <name>.progress.npz."""
  _, variables = train_state.restore_variables(workdir, config, state, seed_index)
  images, labels = test_split
  suite = config.eval.suite
  seed = config.seed + (seed_index or 0)
  path = os.path.join(workdir, name + ('' if seed_index is None else f'_seed{seed_index}'))
  record, per_example = evaluator.evaluate(variables, images, labels, jax.random.key(seed + 2),
                                           progress_path=f'{path}.progress.npz')
  record = {'suite': suite, 'label': _LABELS.get(suite, suite), 'norm': config.eval.norm,
            'state': state, 'checkpoints': checkpoint.state_subdir(workdir, state, seed_index),
            **({} if seed_index is None else {'seed_index': seed_index, 'seed': seed}),
            **record}
  checkpoint.write_json_atomically(f'{path}.json', record)
  progress_lib.write_npz_atomically(f'{path}.npz', per_example, compressed=True)
  return record
