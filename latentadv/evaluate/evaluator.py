"""The evaluator: clean accuracy and the worst case over a suite of attacks, in batches.

An attack suite is a sequence of attacks (attacks/registry.py); each runs `runs` times
(restarts, or the targets of APGD-T and FAB-T) and every run attacks only the examples still
robust, so a strong early attack makes the later ones cheap. An example is robust only if no
run of any attack fooled it.

Every process holds all examples and runs the same host loop (the same examples in the same
batches, in the same order), so results are identical on every process; each global batch
is sharded over the mesh, padded and masked. Global batches have one of the sizes
batch_size / 2^k (k = 0..5, kept if a whole multiple of the device count and at least 8): the
examples of a run fill full batches, and the rest is padded to a multiple of the smallest size
and split into smaller sizes (at batch_size 256, 88 examples run as 64 + 16 + 8, 67 as 64 + 8),
so the points a strong attack leaves still robust are attacked with at most smallest size - 1
padded points; each size compiles once per attack (at most 6 programs per attack; the loops
are rolled, so each compiles in seconds; `batch_sizes` in the record lists those an
evaluation ran). Different device counts give identical results when they keep the same sizes
(e.g. batch_size 256 on 1 to 32 devices). Batch b of run r of attack a draws its key
fold_in(fold_in(fold_in(rng, a), r), b).

Compilation: each program is compiled ahead of time on first use (`jit(...).lower().compile()`)
and timed apart, so the record and the log give each attack's compile and run seconds.

Resuming: with a `progress_path`, every finished batch's outputs are saved there as the
evaluation goes (evaluate/progress.py), and a rerun with the same model, examples, attacks,
settings and key continues from them with the same results.
"""

import functools
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from latentadv import models
from latentadv import parallel
from latentadv.attacks import registry
from latentadv.attacks.attack import Attack
from latentadv.data import transforms
from latentadv.evaluate import progress as progress_lib

# Global batch sizes: batch_size / 2^k, k = 0.._HALVINGS, none below _SMALLEST_BATCH but
# batch_size itself (smaller batches waste more per point than padding costs).
_HALVINGS = 5
_SMALLEST_BATCH = 8


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
    ahead of time for program `name` at batch size B on first use. Adds the seconds of
    tracing, lowering and compiling it (or loading it from the persistent compilation cache)
    to timing[name]['compile_seconds']."""
    entry = _timing_entry(timing, name)
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

  def _map_batches(self, fn, indices: np.ndarray, images: np.ndarray, labels: np.ndarray,
                   progress: progress_lib.Progress, stage: str, sizes: set
                   ) -> list[np.ndarray]:
    """fn(image, label, batch_number) -> a tuple of (B,) arrays, over `indices` in padded
    global batches; returns its arrays for all of `indices`, (len(indices),) each, and adds
    the padded batch sizes to `sizes`. Batches that `progress` holds (as '<stage>/<batch
    number>') are taken from it, the others run and are added to it."""
    parts = []
    for number, (start, padded_size) in enumerate(self._chunks(len(indices))):
      chunk = indices[start:start + padded_size]
      sizes.add(padded_size)
      outputs = progress.get(f'{stage}/{number}')
      if outputs is None:
        padded = np.concatenate([chunk, np.full(padded_size - len(chunk), chunk[0])])
        batch = parallel.shard_batch({'image': transforms.to_unit_interval(images[padded]),
                                      'label': labels[padded]},
                                     self._mesh)
        outputs = [np.asarray(a)[:len(chunk)]
                   for a in fn(batch['image'], batch['label'], number)]
        progress.put(f'{stage}/{number}', outputs)
      parts.append(outputs)
    return [np.concatenate(arrays) for arrays in zip(*parts)]

  def _fingerprint(self, variables, images: np.ndarray, labels: np.ndarray,
                   rng: jax.Array) -> dict:
    """Everything an evaluation's outputs depend on, for progress_lib.Progress."""
    return {'attacks': [[attack.name, attack.runs, attack.settings, attack.straight_through]
                        for attack in self.attacks],
            'eps': float(self.eps), 'batch_sizes': self._padded_sizes,
            'key': np.asarray(jax.random.key_data(rng)).tolist(),
            'examples': progress_lib.digest(images, labels),
            'model': progress_lib.digest(variables)}

  def evaluate(self, variables, images: np.ndarray, labels: np.ndarray, rng: jax.Array,
               progress_path: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluates images (N, H, W, C) (uint8, or float32 in [0, 1]) with labels (N,).

    Returns (record, per_example). record: clean_accuracy, robust_accuracy (worst case over
    all attacks), <attack>_accuracy (robust accuracy after that attack and those before it),
    n_examples, eps, seconds, compile_seconds (all programs' tracing, lowering and compiling,
    or loading from the persistent compilation cache; 0 for programs this Evaluator compiled
    in an earlier call), run_seconds (the rest) and per attack its settings, seconds,
    compile_seconds, run_seconds and batch_sizes (the padded batch sizes it ran at, one
    program each). per_example: index, label, correct, robust, fooled_by_<attack> and each
    attack's norm_key (fab_linf_norm or fab_l2_norm: the smallest norm its runs found, inf
    where none ran or none found one) — (N,) arrays. Every process passes the same arrays and
    gets the same results.

    progress_path: where the outputs of finished batches are saved as the evaluation goes
    (an .npz file, removed when it finishes); an evaluation of the same model, examples,
    attacks, settings and rng that finds it there continues from it. None: no saving.
    """
    start = time.perf_counter()
    n = len(labels)
    variables = jax.device_put(variables, parallel.replicated(self._mesh))
    progress = progress_lib.Progress(
        progress_path,
        self._fingerprint(variables, images, labels, rng) if progress_path else {})
    timing = {}
    correct, = self._map_batches(
        lambda x, y, _: self._execute(timing, 'clean', self._correct, variables, x, y),
        np.arange(n), images, labels, progress, 'clean',
        _timing_entry(timing, 'clean')['batch_sizes'])
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
            remaining, images, labels, progress, f'{attack.name}/{run}',
            _timing_entry(timing, attack.name)['batch_sizes'])
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
    progress.remove()
    return record, per_example

  def __call__(self, variables, images: np.ndarray, labels: np.ndarray, rng: jax.Array,
               progress_path: str | None = None) -> dict:
    """The record of `evaluate` (without the per-example arrays)."""
    return self.evaluate(variables, images, labels, rng, progress_path)[0]


def _timing_entry(timing: dict, name: str) -> dict:
  """timing[name], created as {'compile_seconds': 0.0, 'batch_sizes': set()} if missing."""
  return timing.setdefault(name, {'compile_seconds': 0.0, 'batch_sizes': set()})


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
  (config.method.eps and config.method.norm) with config.eval.pgd's step size and loss and
  config.eval's batch size. If the model has a soft quantiser, PGD differentiates its
  straight-through surrogate (BPDA), so no number it reports is inflated by the quantiser's
  masked gradient."""
  eval_config = ml_collections.ConfigDict(config.eval.to_dict())
  eval_config.pgd.steps, eval_config.pgd.restarts = steps, restarts
  eval_config.norm = config.method.norm
  attack = registry.build('pgd', eval_config, config.method.eps,
                          straight_through=models.has_quantiser(model))
  return Evaluator(model.apply, mesh, [attack], eps=config.method.eps,
                   batch_size=config.eval.batch_size,
                   surrogate_apply_fn=models.straight_through(model).apply)
