"""Catastrophic-overfitting monitor: PGD accuracy on fixed training examples after each epoch,
and the kept state: the best one where training collapsed, the last one otherwise.

Single-step methods can lose all robustness to multi-step attacks within a few steps
(catastrophic overfitting, Wong, Rice & Kolter 2020). With `train.collapse_monitor_examples`
= n > 0 (the default of every single-step recipe), the periodic PGD (`eval.periodic_pgd_steps`,
`eval.periodic_pgd_restarts`, the same random starts every epoch) attacks the first n training
examples after every epoch; they are trained on too, so no data is held back. A collapse is an
epoch whose PGD accuracy is below the best so far by at least `train.collapse_drop` (absolute)
AND by at least `train.collapse_relative_drop` of the best: the relative part makes the
criterion work where robust accuracy itself is small, the absolute part keeps noise at tiny
accuracies from counting. A collapse is logged as a warning and recorded in results.json.

Every new best state is checkpointed in `<workdir>/checkpoints_best`. Training runs on to the
end of its schedule and the trainer evaluates both states; the kept state is the best one if
the run collapsed, else the last one (`kept_state`). With `train.collapse_stop`, training stops
at the collapse and the best state is restored: it becomes the last checkpoint and so the kept
state. The choice of examples and thresholds, and how it differs from Wong et al.'s early
stopping: docs/performance.md.
"""

import jax
import ml_collections
import numpy as np
from absl import logging

from latentadv import checkpoint
from latentadv import evaluate

_ROUNDING = 1e-9  # accuracies are fractions k / n; a drop of exactly collapse_drop counts


def track(record: dict, epoch: int, step: int, pgd_accuracy: float, drop: float,
          relative_drop: float = 0.0) -> dict | None:
  """Adds one epoch's PGD accuracy to the monitor `record`; returns the collapse it starts.

  `record` (updated in place) holds 'best' ({'epoch', 'step', 'pgd_accuracy'} or None),
  'collapsed' (whether the previous epoch was collapsed) and 'collapses' (a list). An epoch
  is collapsed if its accuracy is below the best so far by at least `drop` and by at least
  `relative_drop` times the best; only the first epoch of a collapsed run is a new collapse.
  Ties with the best move the best to the later epoch.
  """
  best = record['best']
  collapsed = best is not None and best['pgd_accuracy'] - pgd_accuracy >= max(
      drop, relative_drop * best['pgd_accuracy']) - _ROUNDING
  collapse = None
  if collapsed and not record['collapsed']:
    collapse = {'epoch': epoch, 'step': step, 'best_epoch': best['epoch'],
                'pgd_accuracy_before': best['pgd_accuracy'],
                'pgd_accuracy_after': pgd_accuracy}
    record['collapses'].append(collapse)
  if best is None or pgd_accuracy >= best['pgd_accuracy']:
    record['best'] = {'epoch': epoch, 'step': step, 'pgd_accuracy': pgd_accuracy}
  record['collapsed'] = collapsed
  return collapse


class CollapseMonitor:
  """Runs the monitor after each epoch and keeps its record in `progress['collapse_monitor']`.

  Off (every method a no-op) when `config.train.collapse_monitor_examples` is 0.
  """

  def __init__(self, config: ml_collections.ConfigDict, evaluator: evaluate.Evaluator,
               train_images: np.ndarray, train_labels: np.ndarray, workdir: str,
               progress: dict, seed: int | None = None,
               best_subdir: str = checkpoint.BEST_SUBDIR):
    """evaluator: the periodic PGD evaluator (`eval.periodic_pgd_steps`, `periodic_pgd_restarts`),
    shared with the periodic test evaluation; train_images: (N, H, W, C) (uint8, or float32 in
    [0, 1]), train_labels: (N,), the same in every process.

    `progress` is the checkpointed progress record (of one seed: seeds.seed_records); a
    resumed run continues its monitor. seed: the model's seed (default config.seed), which
    seeds the attack; best_subdir: where its best state is saved (checkpoint.best_subdir).
    """
    n = config.train.collapse_monitor_examples
    self.enabled = n > 0
    if not self.enabled:
      return
    self._images, self._labels = train_images[:n], train_labels[:n]
    self._evaluator = evaluator
    self._rng = jax.random.key((config.seed if seed is None else seed) + 3)
    self._drop, self._relative_drop = config.train.collapse_drop, config.train.collapse_relative_drop
    self._stop = config.train.collapse_stop
    self._best_subdir = best_subdir
    self._best = checkpoint.Checkpoints(workdir, every_steps=1, keep=1,
                                        subdir=best_subdir, remove_interrupted_saves=True)
    self.record = progress.setdefault('collapse_monitor', {
        'examples': len(self._labels), 'drop': self._drop,
        'relative_drop': self._relative_drop, 'best': None, 'collapsed': False,
        'collapses': [], 'stopped': False})

  @property
  def stopped(self) -> bool:
    """True once a collapse has stopped training (`train.collapse_stop`)."""
    return self.enabled and self.record['stopped']

  @property
  def keeps_best(self) -> bool:
    """True if the kept state is the best checkpoint: the run collapsed and trained on."""
    return self.enabled and bool(self.record['collapses']) and not self.record['stopped']

  def after_epoch(self, state, epoch: int, step: int, progress: dict):
    """Attacks the monitored examples with `state`; returns the state to continue with.

    Adds 'monitor_clean_accuracy' and 'monitor_pgd_accuracy' to the epoch's record (the last entry of
    progress['history']) and checkpoints a new best state. At a collapse with `train.collapse_stop`,
    marks the run stopped and returns the best state instead of `state`.
    """
    if not self.enabled:
      return state
    result = self._evaluator(state.variables(), self._images, self._labels, self._rng)
    progress['history'][-1].update(monitor_clean_accuracy=result['clean_accuracy'],
                                   monitor_pgd_accuracy=result['pgd_accuracy'])
    collapse = track(self.record, epoch, step, result['pgd_accuracy'], self._drop,
                     self._relative_drop)
    if self.record['best']['step'] == step:
      if step not in self._best.all_steps():  # else a resumed run has recomputed this epoch
        self._best.save(step, state, progress, force=True)
        self._best.wait_until_finished()  # on disk before the run's checkpoint of this step
    if collapse is None:
      return state
    logging.warning(
        'Catastrophic overfitting at epoch %d: PGD accuracy on %d monitored training examples '
        'fell from %.4f (epoch %d) to %.4f. %s', epoch, len(self._labels),
        collapse['pgd_accuracy_before'], collapse['best_epoch'], collapse['pgd_accuracy_after'],
        f'Stopping; restoring the state of epoch {collapse["best_epoch"]} (train.collapse_stop).'
        if self._stop else f'Training on; the state of the best epoch (now '
        f'{collapse["best_epoch"]}) is kept (config.train.collapse_stop=True would stop here).')
    if not self._stop:
      return state
    self.record['stopped'] = True
    return self.restore_best(state)

  def restore_best(self, like):
    """The best state (a TrainState shaped and sharded like `like`)."""
    restored = self._best.restore(checkpoint.abstract_like(like))
    if restored is None:
      raise checkpoint.CheckpointError(
          f'No best checkpoint in {self._best_subdir}/ to restore (it was deleted, or the '
          'run was started by a version that saved none). Fix: rerun from scratch in a new '
          '--workdir.')
    return restored[0]

  def close(self):
    """Waits for pending saves of the best state."""
    if self.enabled:
      self._best.close()

  def results(self) -> dict:
    """{'collapse_monitor': the record} for results.json, or {} when off."""
    return {'collapse_monitor': self.record} if self.enabled else {}
