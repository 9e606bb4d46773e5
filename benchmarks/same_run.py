"""Do two workdirs hold the same training run? Figures and parameters, compared exactly.

  python benchmarks/same_run.py WORKDIR_A WORKDIR_B

Compares what the two runs computed, not how long it took or how their files are laid out:
- every number and string of results.json that both files have (per seed in a run of
  several; lists item by item), leaving out timings (keys with 'seconds' or 'per_second');
  keys only one file has are listed, not compared;
- the train state (parameters, BatchNorm statistics, optimizer state) of the newest checkpoint
  in checkpoints/ and in each collapse monitor's best-state folder (checkpoints_best*), array
  by array and bit for bit, read with orbax alone (so a workdir written by another version of
  latentadv, whose config no longer loads, can be compared).
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


def _leaves(record, prefix: str = '') -> dict[str, object]:
  """The numbers and strings of a JSON record by dotted key (list items by index), timings
  left out."""
  if isinstance(record, dict):
    items = [(key, value) for key, value in record.items()
             if not any(word in key for word in _TIMING)]
  elif isinstance(record, list):
    items = list(enumerate(record))
  else:
    return {prefix.rstrip('.'): record}
  leaves = {}
  for key, value in items:
    leaves.update(_leaves(value, f'{prefix}{key}.'))
  return leaves


def _states(workdir: str) -> dict[str, tuple[int, dict[str, np.ndarray]]]:
  """{checkpoint folder: (step, {path: array})}: the train state in the newest checkpoint of
  checkpoints/ and of each checkpoints_best*/ folder (one per seed in a run of several)."""
  workdir = os.path.abspath(workdir)
  folders = [os.path.relpath(root, workdir) for root, _, _ in os.walk(workdir)
             if os.path.basename(root) == 'checkpoints'
             or os.path.relpath(root, workdir).startswith('checkpoints_best')]
  states = {}
  with ocp.StandardCheckpointer() as checkpointer:
    for folder in folders:
      steps = [int(name) for name in os.listdir(os.path.join(workdir, folder)) if name.isdigit()]
      if steps:
        state = checkpointer.restore(os.path.join(workdir, folder, str(max(steps)), 'state'))
        states[folder] = max(steps), ocp.tree.to_flat_dict(state, sep='/')
  return states


def differences(workdir_a: str, workdir_b: str) -> tuple[list[str], list[str]]:
  """(differences, notes): one line per figure, checkpoint or array that differs; the notes
  list the results.json keys only one run has."""
  found, notes = [], []
  records = []
  for workdir in (workdir_a, workdir_b):
    with open(os.path.join(workdir, 'results.json')) as f:
      records.append(_leaves(json.load(f)))
  leaves_a, leaves_b = records
  notes += [f'only in {"A" if key in leaves_a else "B"}: {key}'
            for key in sorted(leaves_a.keys() ^ leaves_b.keys())]
  found += [f'{key}: {leaves_a[key]!r} != {leaves_b[key]!r}'
            for key in sorted(leaves_a.keys() & leaves_b.keys()) if leaves_a[key] != leaves_b[key]]
  states_a, states_b = _states(workdir_a), _states(workdir_b)
  found += [f'{folder}: only in {"A" if folder in states_a else "B"}'
            for folder in sorted(states_a.keys() ^ states_b.keys())]
  for folder in sorted(states_a.keys() & states_b.keys()):
    (step_a, state_a), (step_b, state_b) = states_a[folder], states_b[folder]
    if step_a != step_b:
      found.append(f'{folder}: newest step {step_a} != {step_b}')
      continue
    found += [f'{folder}/{step_a} {path}: only in {"A" if path in state_a else "B"}'
              for path in sorted(state_a.keys() ^ state_b.keys())]
    for path in sorted(state_a.keys() & state_b.keys()):
      a, b = np.asarray(state_a[path]), np.asarray(state_b[path])
      if a.shape != b.shape or a.dtype != b.dtype:
        found.append(f'{folder}/{step_a} {path}: {a.dtype}{list(a.shape)} != '
                     f'{b.dtype}{list(b.shape)}')
      elif a.tobytes() != b.tobytes():
        largest = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
        found.append(f'{folder}/{step_a} {path}: differs (largest difference {largest:.3g})')
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
