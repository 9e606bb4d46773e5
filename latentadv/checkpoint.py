"""Checkpoints of the training state with orbax: periodic saves, resume from the latest.

A checkpoint holds two items: 'state' (the TrainState pytree) and 'progress' (JSON: per-epoch
history and accumulated training seconds), so a resumed run continues its records too.

Failure behaviour: orbax writes a step into a temporary directory and renames it when complete,
so a run killed mid-save leaves no half-written step (the next training run removes its
temporary directory). A state with a NaN or infinite value is never saved. A damaged step is
reported and the next older one restored (the trainer deletes the damaged one); a checkpoint
whose arrays do not match the config's state raises CheckpointMismatchError.
"""

import contextlib
import errno
import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from latentadv import preemption


BEST_SUBDIR = 'checkpoints_best'  # the collapse monitor's best state (latentadv/collapse_monitor.py)
STATES = ('kept', 'last')


def best_subdir(seed_index: int | None = None) -> str:
  """The folder of the best state: BEST_SUBDIR for a single run, BEST_SUBDIR/seed_<k> for seed
  index k of a run of several seeds (latentadv/seeds.py)."""
  return BEST_SUBDIR if seed_index is None else os.path.join(BEST_SUBDIR, f'seed_{seed_index}')
STATE_HELP = ('kept: the best state where training collapsed, else the last (results.json '
              'kept_state); last: the latest checkpoint.')


def state_subdir(workdir: str, state: str = 'kept', seed_index: int | None = None) -> str:
  """The checkpoint folder of a workdir's `state`: 'last' is `checkpoints` (the latest step);
  'kept' is the best state's folder (best_subdir) where results.json says the run (or, in a
  run of several seeds, seed index `seed_index`) collapsed and trained on (its kept state is
  the best one), else `checkpoints` too."""
  if state not in STATES:
    raise ValueError(f'state must be one of {STATES}, got {state!r}.')
  path = os.path.join(workdir, 'results.json')
  if state == 'kept' and os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
    if seed_index is not None and 'seeds' in results:
      results = results['seeds'][seed_index]
    if results.get('kept_state', {}).get('state') == 'best':
      return best_subdir(seed_index)
  return 'checkpoints'


class CheckpointError(RuntimeError):
  """No checkpoint in the directory can be restored."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint holds a different training state (model, optimizer) than the config builds."""


class DiskFullError(CheckpointError):
  """The disk filled up while a checkpoint was written; the older checkpoints are intact."""


class Checkpoints:
  """Saves to `<workdir>/<subdir>` every `every_steps` steps and restores the latest step.

  `remove_interrupted_saves`: delete the temporary directories of saves that never completed
  (for the run that trains into the workdir, not for readers while it may be saving).
  """

  def __init__(self, workdir: str, every_steps: int, keep: int, subdir: str = 'checkpoints',
               remove_interrupted_saves: bool = False):
    options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                           create=True,
                                           cleanup_tmp_directories=remove_interrupted_saves)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, subdir)), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'progress': ocp.JsonCheckpointHandler()})

  @property
  def directory(self) -> str:
    """The folder of the checkpoint steps."""
    return str(self._manager.directory)

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state,
              delete_damaged: bool = False) -> tuple[object, dict] | None:
    """Restores (state, progress) from the newest readable checkpoint, or returns None.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) of the state. A
    checkpoint that can't be read is reported with a warning and the next older one is tried;
    with `delete_damaged`, the damaged newer ones are deleted once one is restored (a resumed
    run must save those steps again).
    Raises CheckpointMismatchError if a checkpoint's arrays differ from `abstract_state`'s
    (another model or optimizer), CheckpointError if checkpoints exist but none can be read.
    """
    directory = self._manager.directory
    failures = []
    for step in self.all_steps()[::-1]:
      difference = self._difference(step, abstract_state)
      if difference:
        raise CheckpointMismatchError(
            f'The checkpoint at step {step} in {directory} does not match this config: '
            f'{difference}. Fix: run with the config the checkpoints were written with '
            f'(config.json next to {directory.name}/), or use a new --workdir.')
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
      except Exception as error:  # orbax raises many types for a damaged checkpoint
        failures.append((step, _one_line(error)))
        logging.warning('Checkpoint at step %d in %s is damaged or incomplete (%s); skipping '
                        'it.', step, directory, _one_line(error))
        continue
      if failures and delete_damaged:
        for damaged, _ in failures:
          self._manager.delete(damaged)
        logging.warning('Restored step %d; deleted the damaged step(s) %s.', step,
                        [damaged for damaged, _ in failures])
      _check_finite(restored.state, step, directory)
      return restored.state, restored.progress
    if failures:
      raise CheckpointError(
          f'No checkpoint in {directory} can be restored '
          f'({"; ".join(f"step {step}: {reason}" for step, reason in failures)}). Fix: delete '
          f'{directory} to train from scratch, or use a new --workdir.')
    return None

  def _difference(self, step: int, abstract_state) -> str | None:
    """The first array that differs between checkpoint `step` and `abstract_state`, or None.

    None also if the checkpoint's metadata can't be read (restore then reports the damage).
    """
    try:
      saved = ocp.tree.to_flat_dict(self._manager.item_metadata(step)['state'].tree, sep='/')
    except Exception:  # pylint: disable=broad-except
      return None
    expected = ocp.tree.to_flat_dict(abstract_state, sep='/')
    for name in [*expected, *sorted(saved.keys() - expected.keys())]:
      if name not in saved:
        return f"{name} is in this config's state but not in the checkpoint"
      if name not in expected:
        return f"the checkpoint has {name}, which this config's state has not"
      if tuple(saved[name].shape) != tuple(expected[name].shape):
        return (f'{name} has shape {tuple(saved[name].shape)} in the checkpoint and '
                f'{tuple(expected[name].shape)} in this config')
    return None

  def save(self, step: int, state, progress: dict, force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the save interval or `force`; True if saved.

    Raises FloatingPointError instead of saving a state with a NaN or infinite value, so the
    newest checkpoint is always a good one.
    """
    if not (force or self._manager.should_save(step)):
      return False
    if not _all_finite(state):
      self._manager.wait_until_finished()  # the checkpoint named below is then on disk
      raise FloatingPointError(
          f'The training state at step {step} has NaN or infinite values; not saving it. The '
          f'last good checkpoint is step {self.latest_step()} in {self._manager.directory}. '
          'Lower config.optim.learning_rate or check the data and the method config.')
    with self._reporting_full_disk():
      return self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
                                force=force)

  def wait_until_finished(self):
    """Blocks until pending saves are complete on disk."""
    with self._reporting_full_disk():
      self._manager.wait_until_finished()

  def close(self):
    """Waits for pending saves to finish and releases the manager."""
    self.wait_until_finished()
    self._manager.close()

  @contextlib.contextmanager
  def _reporting_full_disk(self):
    """Turns a save that failed for want of disk space (here or in orbax's background
    thread) into a one-line DiskFullError naming the newest complete checkpoint."""
    try:
      yield
    except Exception as error:  # tensorstore reports ENOSPC as ValueError, Python as OSError
      if not _is_disk_full(error):
        raise
      complete = sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
      newest = f' (the newest there: step {complete[-1]})' if complete else ''
      raise DiskFullError(
          f'No space left on the device of {self.directory} while saving a checkpoint; the '
          f'checkpoints saved before are intact{newest}. Fix: free disk space there (or use a '
          '--workdir on a larger disk) and run the same command again to resume.') from error


# Keys that may change between the runs of one workdir: where the same data is read from, and
# how (both pipelines give the same batches).
_SAME_DATA_KEYS = ('data.dir', 'data.tfds_data_dir', 'data.pipeline')


def check_config(workdir: str, config: dict):
  """Raises CheckpointMismatchError if `workdir`'s config.json (if any) describes another run
  than `config` (a ConfigDict's to_dict()); only the keys in _SAME_DATA_KEYS may differ."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    written = ocp.tree.to_flat_dict(json.load(f), sep='.')
  current = ocp.tree.to_flat_dict(json.loads(json.dumps(config)), sep='.')
  differences = [key for key in sorted(written.keys() | current.keys())
                 if written.get(key, '(none)') != current.get(key, '(none)')
                 and key not in _SAME_DATA_KEYS]
  if differences:
    key = differences[0]
    more = f' (and {len(differences) - 1} more keys)' if len(differences) > 1 else ''
    raise CheckpointMismatchError(
        f'{path} was written by another config: {key} is {written.get(key, "(none)")!r} there '
        f'and {current.get(key, "(none)")!r} here{more}. Fix: run with the config written there '
        '(the same --config and overrides), or use a new --workdir.')


def abstract_like(tree):
  """jax.ShapeDtypeStruct (with the sharding) of every array in `tree`: what restore takes."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True if every floating-point value in `tree` is finite (a scalar bool array)."""
  return jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                    if jnp.issubdtype(x.dtype, jnp.inexact)]).all()


def _check_finite(state, step: int, directory) -> None:
  """Raises CheckpointError naming the first array of the restored `state` (of checkpoint
  `step` in `directory`) with a NaN or infinite value."""
  if bool(_all_finite(state)):
    return
  bad = next(name for name, value in ocp.tree.to_flat_dict(state, sep='/').items()
             if jnp.issubdtype(value.dtype, jnp.inexact) and not bool(jnp.isfinite(value).all()))
  raise CheckpointError(
      f'The checkpoint at step {step} in {directory} holds NaN or infinite values (in {bad}); '
      'no training run saves such a state, so the files were changed since. Fix: delete '
      f'{os.path.join(directory, str(step))} to resume from the checkpoint before it, or use '
      'a new --workdir.')


def _is_disk_full(error: BaseException) -> bool:
  """True if `error` (or an error it was raised from) says that the disk is full."""
  while error is not None:
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        'No space left on device' in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _one_line(error: Exception, limit: int = 200) -> str:
  """'Type: message' of `error` on one line, cut to about `limit` characters."""
  text = ' '.join(f'{type(error).__name__}: {error}'.split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def write_json_atomically(path: str, record: dict):
  """Writes `record` as JSON to `path` via a temporary file and a rename (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  preemption.pause_point(f'write:{os.path.basename(path)}')
  os.replace(tmp, path)
