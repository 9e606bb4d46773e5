"""Do two workdirs hold the same training run? Figures and parameters, compared exactly.

  python benchmarks/same_run.py WORKDIR_A WORKDIR_B

Compares what the two runs computed, not how long it took or how their files are laid out:
- every number of results.json's `final` record and of each epoch in `history` (per seed in a
  run of several) that both files have, leaving out timings (keys with 'seconds' or
  'per_second'); keys only one file has are listed, not compared;
- the train state (parameters, BatchNorm statistics, optimizer state) of the newest
  checkpoint of each, array by array and bit for bit, read with orbax alone (so a workdir
  written by another version of latentadv, whose config no longer loads, can be compared).
Prints one line per difference and exits with status 1 if there is any, 0 if the runs are
the same. Useful to check that a change of the code changes no result (run the same recipe
before and after it), or that a resumed run equals an uninterrupted one.
"""

import json
import os
import sys

import numpy as np
import orbax.checkpoint as ocp

_TIMING = ('seconds', 'per_second')


def _numbers(record: dict, prefix: str = '') -> dict[str, float]:
  """The numeric leaves of `record` by dotted key, timings left out."""
  leaves = {}
  for key, value in record.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      leaves.update(_numbers(value, f'{name}.'))
    elif (isinstance(value, (int, float)) and not isinstance(value, bool)
          and not any(word in key for word in _TIMING)):
      leaves[name] = value
  return leaves


def _figures(workdir: str) -> dict[str, float]:
  """{dotted key: number} of the final record and the history of every model of the run."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  models = results.get('seeds', [results])
  figures = {}
  for k, model in enumerate(models):
    prefix = f'seed_{k}.' if len(models) > 1 else ''
    figures.update(_numbers(model['final'], f'{prefix}final.'))
    for entry in model['history']:
      figures.update(_numbers(entry, f'{prefix}epoch_{entry["epoch"]}.'))
  return figures


def _state(workdir: str) -> tuple[int, dict[str, np.ndarray]]:
  """(step, {path: array}) of the train state in the newest checkpoint of `workdir`."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  step = max(int(name) for name in os.listdir(directory) if name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(directory, str(step), 'state'))
  return step, ocp.tree.to_flat_dict(state, sep='/')


def differences(workdir_a: str, workdir_b: str) -> tuple[list[str], list[str]]:
  """(differences, notes): one line per figure or array that differs; notes list the figures
  only one run records."""
  found, notes = [], []
  figures_a, figures_b = _figures(workdir_a), _figures(workdir_b)
  for key in sorted(figures_a.keys() ^ figures_b.keys()):
    notes.append(f'only in {"A" if key in figures_a else "B"}: {key}')
  for key in sorted(figures_a.keys() & figures_b.keys()):
    if figures_a[key] != figures_b[key]:
      found.append(f'{key}: {figures_a[key]} != {figures_b[key]}')
  (step_a, state_a), (step_b, state_b) = _state(workdir_a), _state(workdir_b)
  if step_a != step_b:
    found.append(f'newest checkpoint: step {step_a} != step {step_b}')
  for path in sorted(state_a.keys() ^ state_b.keys()):
    found.append(f'state {path}: only in {"A" if path in state_a else "B"}')
  for path in sorted(state_a.keys() & state_b.keys()):
    a, b = np.asarray(state_a[path]), np.asarray(state_b[path])
    if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
      found.append(f'state {path}: differs (largest difference '
                   f'{np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))):.3g})'
                   if a.shape == b.shape else f'state {path}: shape {a.shape} != {b.shape}')
  return found, notes


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    sys.exit(__doc__)
  found, notes = differences(argv[1], argv[2])
  for line in notes:
    print(line)
  for line in found:
    print('DIFFERENT', line)
  print(f'{argv[1]} and {argv[2]}: ' + ('the same run' if not found
                                       else f'{len(found)} differences'))
  return 1 if found else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
