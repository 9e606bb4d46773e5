"""The robustness evaluator: clean accuracy and the worst case over a suite of attacks.

An attack suite is a sequence of attacks; each runs `runs` times (restarts, or the targets of
APGD-T and FAB-T) and every run attacks only the examples still robust, so a strong early attack
makes the later ones cheap. An example is robust only if no run of any attack fooled it.

Suites (`config.eval.suite`):
  pgd         PGD-k-r (k = eval.pgd_steps, r = eval.pgd_restarts, step eval.step_size x eps,
              loss eval.loss); an example is fooled if ANY iterate of any restart is.
  apgd-ce     APGD with cross-entropy (eval.apgd_steps, eval.apgd_restarts).
  apgd-t      APGD-T with the targeted DLR loss, one run per target (eval.apgd_targets).
  square      Square attack (eval.square_queries, eval.square_p_init): no gradients.
  fab-t       FAB-T, minimal perturbations towards each target (eval.fab_targets, with
              eval.fab_steps steps and eval.fab_restarts restarts each); an example is fooled
              only if the point found is within eps and misclassified once re-evaluated.
  bpda        PGD through the model's straight-through surrogate (BPDA): for models whose
              input layer masks gradients (the soft quantiser); the same as `pgd` otherwise.
  autoattack  apgd-ce -> apgd-t -> fab-t -> square, each on the points still robust: a JAX
              port of AutoAttack's "standard" version. For a model with a soft quantiser the
              gradient attacks differentiate the straight-through surrogate (BPDA), as they
              must.

`config.eval.norm` sets every attack's threat model: 'linf' (default) or 'l2', the L2 ball of
radius eps (attacks/norms.py; AutoAttack's L2 versions of APGD, FAB and Square). eps is
config.method.eps, read in that norm; the periodic and final evaluations during training
(`from_config`) use config.method.norm, the threat model the run trains against.

Every process holds all examples and runs the same host loop (the same examples in the same
batches, in the same order), so results are identical on every process; each global batch
is sharded over the mesh, padded and masked. Global batches have one of the sizes
batch_size / 2^k (k = 0..5, kept if a whole multiple of the device count and at least 8): the
examples of a run fill full batches, and the rest is padded to a multiple of the smallest size
and split into smaller sizes (at batch_size 256, 88 examples run as 64 + 16 + 8, 67 as 64 + 8),
so the points a strong attack leaves still robust are attacked with at most smallest size - 1
padded points; each size compiles once per attack (at most 6 programs per attack; the loops
are rolled, so each compiles in seconds; `batch_sizes` in the record lists those an
evaluation ran). Different device counts give identical results when they
keep the same sizes (e.g. batch_size 256 on 1 to 32 devices).

Compilation: each program is compiled ahead of time on first use (`jit(...).lower().compile()`)
and timed apart, so the record and the log give each attack's compile and run seconds. The
gradient attacks' step loops are rolled (`config.eval.attack_loops`: 'auto' = 'rolled', or
'unrolled'; attacks/loops.py says why); the
entry points keep compiled programs in JAX's persistent compilation cache
(latentadv/compilation.py), so a later run loads them instead of compiling.

Library: `Evaluator`, `from_config`, `load_model(workdir)`.
Command line: `python -m latentadv.evaluate --workdir=DIR [--config.eval.suite=autoattack ...]`
evaluates the latest checkpoint in DIR with the config saved there (overridable) and writes
`DIR/eval_<suite>.json` (accuracies, settings, n examples, compile and run seconds, also per
attack) and `DIR/eval_<suite>.npz` (per example: index, label, correct, robust,
fooled_by_<attack>, and for FAB-T fab_linf_norm or fab_l2_norm: the smallest norm of the
adversarial points its runs found, inf where they found none or where FAB-T never ran because
the point was misclassified or fooled by an earlier attack).
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import checkpoint
from latentadv import compilation
from latentadv import models
from latentadv import parallel
from latentadv import seeds
from latentadv import train_state
from latentadv import validation
from latentadv.attacks import SUITES
from latentadv.attacks import apgd
from latentadv.attacks import fab
from latentadv.attacks import loops
from latentadv.attacks import norms
from latentadv.attacks import pgd
from latentadv.attacks import square
from latentadv.data import readers
from latentadv.data import transforms

# Global batch sizes: batch_size / 2^k, k = 0.._HALVINGS, none below _SMALLEST_BATCH but
# batch_size itself (smaller batches waste more per point than padding costs).
_HALVINGS = 5
_SMALLEST_BATCH = 8

# fooled(logits_fn, x (B, H, W, C), y (B,), rng, run) -> (B,) bool, or (fooled (B,) bool,
# norm (B,)) for an attack with a norm_key; run is a traced int32.
FooledFn = Callable[..., jax.Array | tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Attack:
  """One attack of a suite: `runs` calls of `fooled`, each with its own key and run index.

  `straight_through` makes the attack differentiate the model's BPDA surrogate. With a
  `norm_key`, `fooled` also returns the norm (in the attack's threat model) of the
  adversarial point each example got (inf if none), and the evaluator stores the smallest
  over the runs under that key.
  """
  name: str
  runs: int
  fooled: FooledFn
  settings: dict
  straight_through: bool = False
  norm_key: str = ''


def make_attack(name: str, eval_config: ml_collections.ConfigDict, eps: float,
                straight_through: bool = False) -> Attack:
  """The attack `name` (a member of a suite) with its settings from `eval_config`, in the
  threat model eval_config.norm with radius eps."""
  norm, unroll = eval_config.norm, loops.unroll_steps(eval_config.attack_loops)
  if name in ('pgd', 'bpda'):
    step_size = eval_config.step_size * eps
    settings = dict(steps=eval_config.pgd_steps, restarts=eval_config.pgd_restarts,
                    step_size=step_size, loss=eval_config.loss, norm=norm, unrolled=unroll)

    def fooled(logits_fn, x, y, rng, run):
      del run
      return pgd.fooled_in_restart(logits_fn, x, y, rng, eps=eps, step_size=step_size,
                                   steps=settings['steps'], loss=settings['loss'], norm=norm,
                                   unroll=unroll)
    return Attack(name, eval_config.pgd_restarts, fooled, settings,
                  straight_through or name == 'bpda')
  if name == 'apgd-ce':
    settings = dict(steps=eval_config.apgd_steps, restarts=eval_config.apgd_restarts,
                    loss='ce', norm=norm, unrolled=unroll)

    def fooled(logits_fn, x, y, rng, run):
      del run
      return apgd.apgd(logits_fn, x, y, rng, eps=eps, steps=settings['steps'], loss='ce',
                       norm=norm, unroll=unroll)[1]
    return Attack(name, eval_config.apgd_restarts, fooled, settings, straight_through)
  if name == 'apgd-t':
    settings = dict(steps=eval_config.apgd_steps, targets=eval_config.apgd_targets,
                    loss='targeted_dlr', norm=norm, unrolled=unroll)

    def fooled(logits_fn, x, y, rng, run):
      return apgd.apgd_targeted_run(logits_fn, x, y, rng, run, eps=eps,
                                    steps=settings['steps'], norm=norm, unroll=unroll)[1]
    return Attack(name, eval_config.apgd_targets, fooled, settings, straight_through)
  if name == 'square':
    settings = dict(queries=eval_config.square_queries, p_init=eval_config.square_p_init,
                    norm=norm)

    def fooled(logits_fn, x, y, rng, run):
      del run
      return square.square(logits_fn, x, y, rng, eps=eps, n_queries=settings['queries'],
                           p_init=settings['p_init'], norm=norm)[1]
    return Attack(name, 1, fooled, settings)
  if name == 'fab-t':
    settings = dict(steps=eval_config.fab_steps, targets=eval_config.fab_targets,
                    restarts=eval_config.fab_restarts, norm=norm, unrolled=unroll)

    def fooled(logits_fn, x, y, rng, run):
      restarts = settings['restarts']
      x_adv, distance = fab.fab_targeted_run(logits_fn, x, y, rng, run // restarts, eps=eps,
                                             steps=settings['steps'],
                                             random_start=run % restarts > 0, norm=norm,
                                             unroll=unroll)
      return fab.fooled_within(logits_fn, x, y, x_adv, eps, norm), distance
    return Attack(name, eval_config.fab_targets * eval_config.fab_restarts, fooled, settings,
                  straight_through, norm_key=f'fab_{norm}_norm')
  raise ValueError(f'Unknown attack {name!r}; valid: pgd, bpda, apgd-ce, apgd-t, fab-t, '
                   'square.')


def suite_attacks(suite: str, eval_config: ml_collections.ConfigDict, eps: float, *,
                  has_quantiser: bool = False) -> list[Attack]:
  """The attacks of `suite` (see SUITES); autoattack's gradient attacks use BPDA when the
  model has a gradient-masking input quantiser (`has_quantiser`)."""
  if suite not in SUITES:
    raise ValueError(f'Unknown suite {suite!r}; valid suites: {", ".join(SUITES)}.')
  return [make_attack(name, eval_config, eps,
                      straight_through=has_quantiser and suite == 'autoattack')
          for name in SUITES[suite]]


class Evaluator:
  """Clean accuracy and robust accuracy under a sequence of attacks, with jitted attacks.

  apply_fn: a Flax `model.apply`; surrogate_apply_fn: the apply of the model's BPDA surrogate
  (same variables; used by attacks with `straight_through`), default apply_fn.
  """

  def __init__(self, apply_fn, mesh, attacks: Sequence[Attack], *, eps: float,
               batch_size: int, surrogate_apply_fn=None):
    self.attacks = tuple(attacks)
    self.eps = eps
    self._mesh = mesh
    self._batch_size = batch_size
    parallel.check_batch_size(batch_size, 'config.eval.batch_size', mesh)
    self._padded_sizes = [batch_size >> k for k in range(_HALVINGS + 1)
                          if batch_size % (1 << k) == 0
                          and (batch_size >> k) % mesh.devices.size == 0
                          and (k == 0 or batch_size >> k >= _SMALLEST_BATCH)]
    replicated = parallel.replicated(mesh)
    surrogate_apply_fn = surrogate_apply_fn or apply_fn

    def correct(variables, image, label):
      return (apply_fn(variables, image, train=False).argmax(-1) == label,)

    def fooled_fn(attack):
      attacked_apply = surrogate_apply_fn if attack.straight_through else apply_fn

      def fooled(variables, image, label, rng, run):
        logits_fn = functools.partial(attacked_apply, variables, train=False)
        outputs = attack.fooled(logits_fn, image, label, rng, run)
        return outputs if attack.norm_key else (outputs,)
      return jax.jit(fooled, out_shardings=replicated)

    self._correct = jax.jit(correct, out_shardings=replicated)
    self._fooled = [fooled_fn(attack) for attack in self.attacks]
    self._executables = {}  # (program name, padded batch size) -> compiled executable

  def _execute(self, timing: dict, name: str, jitted, variables, image, *args) -> tuple:
    """jitted(variables, image, *args), image (B, H, W, C), through an executable compiled
    ahead of time for program `name` at batch size B on first use. Adds B to
    timing[name]['batch_sizes'] and the seconds of tracing, lowering and compiling it (or
    loading it from the persistent compilation cache) to timing[name]['compile_seconds']."""
    entry = timing.setdefault(name, {'compile_seconds': 0.0, 'batch_sizes': set()})
    entry['batch_sizes'].add(image.shape[0])
    key = (name, image.shape[0])
    if key not in self._executables:
      start = time.perf_counter()
      self._executables[key] = jitted.lower(variables, image, *args).compile()
      entry['compile_seconds'] += time.perf_counter() - start
    return self._executables[key](variables, image, *args)

  def _chunks(self, n: int) -> list[tuple[int, int]]:
    """(start, padded size) of each global batch that covers n examples: full batches, then
    the rest padded to a multiple of the smallest padded size and split into distinct padded
    sizes, largest first (e.g. at batch size 256: 88 -> 64 + 16 + 8, 67 -> 64 + 8)."""
    chunks = [(start, self._batch_size) for start in range(0, n - n % self._batch_size,
                                                          self._batch_size)]
    smallest = self._padded_sizes[-1]
    rest = -(-(n % self._batch_size) // smallest) * smallest
    start = n - n % self._batch_size
    for size in self._padded_sizes:
      if rest >= size:
        chunks.append((start, size))
        start, rest = start + size, rest - size
    return chunks

  def _map_batches(self, fn, indices: np.ndarray, images: np.ndarray, labels: np.ndarray
                   ) -> list[np.ndarray]:
    """fn(image, label, batch_number) -> a tuple of (B,) arrays, over `indices` in padded
    global batches; returns its arrays for all of `indices`, (len(indices),) each."""
    parts = []
    for number, (start, padded_size) in enumerate(self._chunks(len(indices))):
      chunk = indices[start:start + padded_size]
      padded = np.concatenate([chunk, np.full(padded_size - len(chunk), chunk[0])])
      batch = parallel.shard_batch({'image': transforms.to_unit_interval(images[padded]),
                                    'label': labels[padded]},
                                   self._mesh)
      parts.append([np.asarray(a)[:len(chunk)]
                    for a in fn(batch['image'], batch['label'], number)])
    return [np.concatenate(arrays) for arrays in zip(*parts)]

  def evaluate(self, variables, images: np.ndarray, labels: np.ndarray, rng: jax.Array
               ) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluates images (N, H, W, C) (uint8, or float32 in [0, 1]) with labels (N,).

    Returns (record, per_example). record: clean_accuracy, robust_accuracy (worst case over
    all attacks), <attack>_accuracy (robust accuracy after that attack and those before it),
    n_examples, eps, seconds, compile_seconds (all programs' tracing, lowering and compiling,
    or loading from the persistent compilation cache; 0 for programs this Evaluator compiled
    in an earlier call), run_seconds (the rest) and per attack its settings, seconds,
    compile_seconds, run_seconds and batch_sizes (the padded batch sizes it ran at, one
    program each). per_example: index,
    label, correct, robust, fooled_by_<attack> and each attack's norm_key (fab_linf_norm or
    fab_l2_norm: the smallest norm its runs found, inf where none ran or none found one) —
    (N,) arrays. Every process passes the same arrays and gets the same results.
    """
    start = time.perf_counter()
    n = len(labels)
    variables = jax.device_put(variables, parallel.replicated(self._mesh))
    timing = {}
    correct, = self._map_batches(
        lambda x, y, _: self._execute(timing, 'clean', self._correct, variables, x, y),
        np.arange(n), images, labels)
    robust = correct.copy()
    record = {'clean_accuracy': float(correct.mean()), 'n_examples': n, 'eps': self.eps,
              'attacks': {}}
    per_example = {'index': np.arange(n), 'label': np.asarray(labels), 'correct': correct}
    for a, (attack, fooled_fn) in enumerate(zip(self.attacks, self._fooled)):
      attack_start = time.perf_counter()
      fooled_by = np.zeros(n, bool)
      norm = np.full(n, np.inf, np.float32)
      for run in range(attack.runs):
        remaining = np.flatnonzero(robust)
        if not len(remaining):
          break
        run_rng = jax.random.fold_in(jax.random.fold_in(rng, a), run)
        fooled, *run_norm = self._map_batches(
            lambda x, y, number: self._execute(timing, attack.name, fooled_fn, variables, x, y,
                                               jax.random.fold_in(run_rng, number), run),
            remaining, images, labels)
        if run_norm:
          norm[remaining] = np.minimum(norm[remaining], run_norm[0])
        fooled_by[remaining[fooled]] = True
        robust[remaining[fooled]] = False
        logging.info('%s run %d/%d: %d of %d examples still robust (%.0f s).', attack.name,
                     run + 1, attack.runs, robust.sum(), n, time.perf_counter() - attack_start)
      per_example[f'fooled_by_{attack.name}'] = fooled_by
      if attack.norm_key:
        per_example[attack.norm_key] = norm
      record[f'{attack.name}_accuracy'] = float(robust.mean())
      times = _times(timing.get(attack.name), time.perf_counter() - attack_start)
      logging.info('%s: %.1f s compiling (batch sizes %s), %.1f s running.', attack.name,
                   times['compile_seconds'], times['batch_sizes'], times['run_seconds'])
      record['attacks'][attack.name] = {**attack.settings, 'straight_through':
                                        attack.straight_through, **times}
    per_example['robust'] = robust
    record['robust_accuracy'] = float(robust.mean())
    record['seconds'] = time.perf_counter() - start
    record['compile_seconds'] = sum(entry['compile_seconds'] for entry in timing.values())
    record['run_seconds'] = record['seconds'] - record['compile_seconds']
    return record, per_example

  def __call__(self, variables, images: np.ndarray, labels: np.ndarray, rng: jax.Array
               ) -> dict:
    """The record of `evaluate` (without the per-example arrays)."""
    return self.evaluate(variables, images, labels, rng)[0]


def _times(entry: dict | None, seconds: float) -> dict:
  """{seconds, compile_seconds, run_seconds (the rest), batch_sizes (sorted)} of a program
  that took `seconds` in all, from its Evaluator._execute timing entry (None: never ran)."""
  entry = entry or {'compile_seconds': 0.0, 'batch_sizes': ()}
  return {'seconds': seconds, 'compile_seconds': entry['compile_seconds'],
          'run_seconds': seconds - entry['compile_seconds'],
          'batch_sizes': sorted(entry['batch_sizes'])}


def from_config(model, mesh, config: ml_collections.ConfigDict, *, steps: int,
                restarts: int) -> Evaluator:
  """A PGD-`steps`-`restarts` Evaluator of the Flax `model` in the training threat model
  (config.method.eps and config.method.norm) with config.eval's step size, loss and batch
  size. If the model has a soft quantiser, PGD differentiates its straight-through surrogate
  (BPDA), so no number it reports is inflated by the quantiser's masked gradient."""
  eval_config = ml_collections.ConfigDict(config.eval.to_dict())
  eval_config.pgd_steps, eval_config.pgd_restarts = steps, restarts
  eval_config.norm = config.method.norm
  attack = make_attack('pgd', eval_config, config.method.eps,
                       straight_through=models.has_quantiser(model))
  return Evaluator(model.apply, mesh, [attack], eps=config.method.eps,
                   batch_size=config.eval.batch_size,
                   surrogate_apply_fn=models.straight_through(model).apply)


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


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict,
                     state: str = 'kept', seed_index: int | None = None) -> dict:
  """Evaluates the run's `state` in `workdir` ('kept': the best state where training collapsed,
  else the last; 'last': the latest checkpoint) with `config.eval.suite` on the first
  `config.eval.n_examples` test examples (0 = all) in the threat model config.eval.norm with
  radius config.method.eps; writes eval_<suite>.json and .npz (eval_<suite>_last.* for
  'last').

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
  attacks = suite_attacks(config.eval.suite, config.eval, config.method.eps,
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
  if jax.process_index() == 0:
    checkpoint.write_json_atomically(os.path.join(workdir, f'{name}.json'), record)
  logging.info('%s over %d seeds: %s', config.eval.suite, config.num_seeds, record['summary'])
  return record


def _evaluate_seed(workdir: str, config: ml_collections.ConfigDict, state: str,
                   seed_index: int | None, name: str, evaluator: Evaluator,
                   test_split: tuple[np.ndarray, np.ndarray]) -> dict:
  """evaluate_workdir of one model (seed index `seed_index`, None for a single-seed run) with
  `evaluator` on test_split (images (N, H, W, C), labels (N,)), written to <name>.json/.npz
  (<name>_seed<k>.* for seed index k)."""
  _, variables = train_state.restore_variables(workdir, config, state, seed_index)
  images, labels = test_split
  suite = config.eval.suite
  seed = config.seed + (seed_index or 0)
  record, per_example = evaluator.evaluate(variables, images, labels, jax.random.key(seed + 2))
  record = {'suite': suite, 'label': _LABELS.get(suite, suite), 'norm': config.eval.norm,
            'state': state, 'checkpoints': checkpoint.state_subdir(workdir, state, seed_index),
            **({} if seed_index is None else {'seed_index': seed_index, 'seed': seed}),
            **record}
  if jax.process_index() == 0:
    path = os.path.join(workdir, name + ('' if seed_index is None else f'_seed{seed_index}'))
    checkpoint.write_json_atomically(f'{path}.json', record)
    np.savez_compressed(f'{path}.npz', **per_example)
  return record


_LABELS = {'autoattack': 'AutoAttack-style worst case, JAX port (APGD-CE, APGD-T, FAB-T, '
                         'Square)'}


def _set_leaves(config: ml_collections.ConfigDict, values: dict, prefix: str = ''):
  """Sets every leaf of the nested dict `values` that `config` has; warns about the others
  (keys of an older version's saved config)."""
  for key, value in values.items():
    if key not in config:
      logging.warning('Ignoring config.%s%s of the saved config: not a key of this version.',
                      prefix, key)
    elif isinstance(value, dict):
      _set_leaves(config[key], value, f'{prefix}{key}.')
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
  _set_leaves(config, load_config(workdir).to_dict())
  _apply_overrides(config, overrides)
  validation.validate(config)
  return config


def _main(argv):
  del argv
  compilation.enable_cache()
  config = workdir_config(FLAGS.workdir, base_config.get_config(),
                          config_flags.get_override_values(FLAGS['config']))
  result = evaluate_workdir(FLAGS.workdir, config, FLAGS.state, FLAGS.seed_index)
  logging.info('%s', json.dumps(result, indent=2))


if __name__ == '__main__':
  from latentadv import base_config  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  flags.DEFINE_string('workdir', None, 'Directory of a training run (with config.json).')
  flags.DEFINE_enum('state', 'kept', checkpoint.STATES, checkpoint.STATE_HELP)
  flags.DEFINE_integer('seed_index', None, seeds.SEED_INDEX_HELP + ' Default: every seed.')
  flags.mark_flag_as_required('workdir')
  config_flags.DEFINE_config_dict(
      'config', base_config.get_config(),
      'Overrides of the saved config, e.g. --config.eval.suite=autoattack.')
  app.run(_main)
