"""Checkpoints of the training state with orbax: periodic saves, resume from the latest.

A checkpoint holds two items: 'state' (the TrainState pytree) and 'progress' (JSON: per-epoch
history and accumulated training seconds), so a resumed run continues its records too.
"""

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
  """Saves to `<workdir>/checkpoints` every `every_steps` steps and restores the latest step."""

  def __init__(self, workdir: str, every_steps: int, keep: int):
    options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                           create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                                          options=options, item_names=('state', 'progress'))

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def restore(self, abstract_state) -> tuple[object, dict] | None:
    """Restores (state, progress) from the newest readable checkpoint, or returns None.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) of the state. A
    checkpoint that can't be read is reported and the next older one is tried; if checkpoints
    exist but none can be read (e.g. the config now names another model), this raises.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
      except Exception as error:  # orbax raises many types for a damaged checkpoint
        logging.warning('Checkpoint at step %d could not be restored (%s: %s); trying an '
                        'older one.', step, type(error).__name__, error)
        continue
      return restored.state, restored.progress
    if steps:
      raise RuntimeError(
          f'None of the checkpoints {steps} in {self._manager.directory} matches this run\'s '
          'config (see the warnings above). Use a new --workdir, or the config the checkpoints '
          'were written with (config.json in the workdir).')
    return None

  def save(self, step: int, state, progress: dict, force: bool = False) -> bool:
    """Saves (asynchronously) if `step` is on the save interval or `force`; True if saved."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)), force=force)

  def close(self):
    """Waits for pending saves to finish."""
    self._manager.wait_until_finished()
    self._manager.close()


def write_json_atomically(path: str, record: dict):
  """Writes `record` as JSON to `path` via a temporary file and a rename (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
