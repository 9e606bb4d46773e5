"""Resumable evaluation: the outputs of an evaluation's finished batches, kept in one file.

An evaluation is a fixed sequence of batches (the clean pass, then each run of each attack on
the points still robust), each a pure function of the model, the examples, the settings and
the key. `Progress` saves every finished batch's per-example outputs to its file (a temporary
file, then os.replace, so a kill leaves the old file or the new one), with a fingerprint of
all of those inputs. A rerun with the same fingerprint takes the saved outputs instead of
running those batches again, so it ends with the results of an uninterrupted evaluation; a
file with another fingerprint is ignored (one log line says so) and replaced as the new
evaluation goes.
"""

import hashlib
import json
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_FINGERPRINT = 'fingerprint'


def digest(*trees) -> str:
  """SHA-256 of the structure, shapes, dtypes and values of pytrees of arrays (numpy, or JAX
  arrays whose first addressable shard holds the whole value, e.g. replicated ones)."""
  sha = hashlib.sha256()
  for tree in trees:
    leaves, structure = jax.tree.flatten(tree)
    sha.update(str(structure).encode())
    for leaf in leaves:
      value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
      sha.update(f'{value.shape}{value.dtype}'.encode())
      sha.update(np.ascontiguousarray(value).tobytes())
  return sha.hexdigest()


def write_npz_atomically(path: str, arrays: dict[str, np.ndarray], compressed: bool = False):
  """Writes `arrays` as an .npz file to `path` via a temporary file and a rename (process 0
  only)."""
  if jax.process_index() != 0:
    return
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    (np.savez_compressed if compressed else np.savez)(f, **arrays)
  os.replace(tmp, path)


class Progress:
  """The finished batches of one evaluation, saved to `path` after each (None: kept in memory
  only); `fingerprint` (a JSON-serialisable dict) names everything the outputs depend on."""

  def __init__(self, path: str | None, fingerprint: dict):
    self._path = path
    self._fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
    self._batches: dict[str, list[np.ndarray]] = {}
    if path and os.path.exists(path):
      self._load(path)
    if path and jax.process_count() > 1:  # no process writes before every process has read
      multihost_utils.sync_global_devices(f'evaluation progress read: {path}')

  def _load(self, path: str):
    with np.load(path) as saved:
      arrays = dict(saved)
    saved_fingerprint = json.loads(str(arrays.pop(_FINGERPRINT)))
    if saved_fingerprint != self._fingerprint:
      changed = sorted(key for key in {**saved_fingerprint, **self._fingerprint}
                       if saved_fingerprint.get(key) != self._fingerprint.get(key))
      logging.info('%s holds finished batches of an evaluation with other settings (changed: '
                   '%s); starting afresh.', path, ', '.join(changed))
      return
    for name, value in arrays.items():
      batch, index = name.rsplit('#', 1)
      self._batches.setdefault(batch, []).append((int(index), value))
    self._batches = {batch: [value for _, value in sorted(parts)]
                     for batch, parts in self._batches.items()}
    logging.info('Resuming the evaluation from %d finished batches in %s.',
                 len(self._batches), path)

  def get(self, batch: str) -> list[np.ndarray] | None:
    """The saved outputs of batch `batch`, or None if it has not finished."""
    return self._batches.get(batch)

  def put(self, batch: str, outputs: list[np.ndarray]):
    """Records the outputs of finished batch `batch` and saves every finished batch."""
    self._batches[batch] = outputs
    if self._path:
      write_npz_atomically(self._path, {
          _FINGERPRINT: np.asarray(json.dumps(self._fingerprint, sort_keys=True)),
          **{f'{name}#{k}': value for name, values in self._batches.items()
             for k, value in enumerate(values)}})

  def remove(self):
    """Deletes the file (process 0): the evaluation has finished."""
    if self._path and jax.process_index() == 0 and os.path.exists(self._path):
      os.remove(self._path)
