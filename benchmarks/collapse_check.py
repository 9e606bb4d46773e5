"""The collapse monitor's criterion applied after the fact to a suite's per-epoch PGD accuracy.

  python benchmarks/collapse_check.py benchmarks/results/cifar_suite.json

For runs that predate the monitor (or ran without it): each run's `history` holds the periodic
PGD accuracy on test images after every epoch; `collapse_monitor.track` with the default `collapse_drop`
and `collapse_relative_drop` of latentadv/base_config.py says which epochs it would flag as collapses and
which epoch it would keep. A proxy: the monitor itself attacks training examples. Prints a
markdown table, one row per run.
"""

import json
import os
import sys

from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from latentadv import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import collapse_monitor  # pylint: disable=g-import-not-at-top,wrong-import-position


def check(history: list[dict], drop: float, relative_drop: float) -> dict:
  """{'collapse_epochs': [...], 'best_epoch', 'best', 'last'} of one run's per-epoch
  'pgd_accuracy' under the monitor's criterion."""
  record = {'best': None, 'collapsed': False, 'collapses': []}
  for entry in history:
    collapse_monitor.track(record, entry['epoch'], entry['step'], entry['pgd_accuracy'], drop,
                      relative_drop)
  return {'collapse_epochs': [collapse['epoch'] for collapse in record['collapses']],
          'best_epoch': record['best']['epoch'], 'best': record['best']['pgd_accuracy'],
          'last': history[-1]['pgd_accuracy']}


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('Usage: collapse_check.py SUITE.json')
  train_config = base_config.get_config().train
  with open(argv[1]) as f:
    runs = json.load(f)['runs']
  print('| run | flagged epochs | best epoch: PGD | last epoch: PGD |')
  print('| --- | --- | --- | --- |')
  for run in runs:
    if not run['history'] or 'pgd_accuracy' not in run['history'][0]:
      continue
    result = check(run['history'], train_config.collapse_drop, train_config.collapse_relative_drop)
    flagged = ', '.join(map(str, result['collapse_epochs'])) or 'none'
    print(f'| {os.path.basename(run["workdir"])} | {flagged} | {result["best_epoch"]}: '
          f'{100 * result["best"]:.1f} % | {len(run["history"])}: {100 * result["last"]:.1f} % |')


if __name__ == '__main__':
  app.run(main)
