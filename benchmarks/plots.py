"""Plots of a suite's results (benchmarks/results/<suite>.json, written by suite.py).

  python benchmarks/plots.py benchmarks/results/mnist_suite.json

Writes next to the JSON:
  <suite>_robust_vs_time.png  AutoAttack-style robust accuracy vs training time, one point per
                              run, a colour per method (and a marker per eps).
  <suite>_pgd_per_epoch.png   PGD accuracy on the periodic evaluation subset after each epoch,
                              one line per run: catastrophic overfitting shows as a collapse.
                              Suites of several seeds per program (--num_seeds > 1): one panel
                              per (method, eps), one thin line per seed, and a cross at each
                              epoch where the collapse monitor saw a collapse.
"""

import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def _colours(runs: list[dict]) -> dict[str, tuple]:
  """A distinct RGBA colour per method (up to 20 methods), in order of first appearance."""
  methods = list(dict.fromkeys(run['method'] for run in runs))
  palette = matplotlib.colormaps['tab10' if len(methods) <= 10 else 'tab20']
  return {method: palette(i % palette.N) for i, method in enumerate(methods)}


def robust_vs_time(runs: list[dict], path: str):
  """Scatter of AutoAttack-style robust accuracy (%) against training seconds."""
  colours = _colours(runs)
  markers = {eps: marker for eps, marker in zip(sorted({r['eps'] for r in runs}), 'os^D')}
  figure, axes = plt.subplots(figsize=(6.5, 4.5))
  labelled = set()
  for run in runs:
    if run['autoattack'] is None:  # its AutoAttack-style suite has not run
      continue
    label = f'{run["method"]} (eps {run["eps"]:.3g})'
    axes.scatter(run['train_seconds'], 100 * run['autoattack'], color=colours[run['method']],
                 marker=markers[run['eps']], label=None if label in labelled else label)
    labelled.add(label)
  axes.set_xscale('log')
  axes.set_xlabel('training time (s, log scale)')
  axes.set_ylabel('AutoAttack-style robust accuracy (%)')
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def pgd_per_epoch(runs: list[dict], path: str):
  """Lines of the periodic PGD accuracy (%) against the epoch, one per run."""
  colours = _colours(runs)
  eps_values = sorted({r['eps'] for r in runs})
  figure, panels = plt.subplots(1, len(eps_values), figsize=(6 * len(eps_values), 4.5),
                                squeeze=False)
  for axes, eps in zip(panels[0], eps_values):
    labelled = set()
    for run in (r for r in runs if r['eps'] == eps):
      history = [h for h in run['history'] if 'pgd_accuracy' in h]
      axes.plot([h['epoch'] for h in history], [100 * h['pgd_accuracy'] for h in history],
                color=colours[run['method']], marker='.',
                label=None if run['method'] in labelled else run['method'])
      labelled.add(run['method'])
    axes.set_title(f'eps {eps:.4g}')
    axes.set_xlabel('epoch')
    axes.set_ylabel('PGD accuracy, periodic subset (%)')
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def pgd_per_epoch_by_seed(runs: list[dict], path: str):
  """One panel per (method, eps): the periodic PGD accuracy (%) against the epoch, a thin
  line per seed, a cross where the collapse monitor saw a collapse start (the run record's
  'collapse_epochs')."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['eps']), []).append(run)
  columns = min(len(groups), 4)
  rows = -(-len(groups) // columns)
  figure, panels = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False,
                                sharey=True)
  palette = matplotlib.colormaps['tab10']
  for axes, ((method, eps), group) in zip(panels.flat, groups.items()):
    collapsed = 0
    for i, run in enumerate(group):
      history = {h['epoch']: 100 * h['pgd_accuracy'] for h in run['history']
                 if 'pgd_accuracy' in h}
      axes.plot(list(history), list(history.values()), color=palette(i % palette.N),
                linewidth=0.9, label=f'seed {run.get("seed", i)}')
      marks = [epoch for epoch in run.get('collapse_epochs') or [] if epoch in history]
      axes.plot(marks, [history[epoch] for epoch in marks], linestyle='none', marker='x',
                markersize=8, color=palette(i % palette.N))
      collapsed += bool(run.get('collapsed'))
    axes.set_title(f'{method}, eps {eps:.4g}: collapsed {collapsed} of {len(group)}', fontsize=9)
    axes.set_xlabel('epoch')
    axes.grid(alpha=0.3)
  for axes in panels[:, 0]:
    axes.set_ylabel('PGD accuracy, periodic subset (%)')
  for axes in list(panels.flat)[len(groups):]:
    axes.axis('off')
  panels.flat[0].legend(fontsize=7)
  figure.suptitle('x: epoch where the collapse monitor saw a collapse', fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(path: str):
  """Writes the plots for the suite results at `path` (robust vs time where the AutoAttack-style
  suite ran on some run)."""
  with open(path) as f:
    results = json.load(f)
  runs = results['runs']
  stem = os.path.splitext(path)[0]
  if any(run['autoattack'] is not None for run in runs):
    robust_vs_time(runs, f'{stem}_robust_vs_time.png')
  if results.get('settings', {}).get('num_seeds', 1) > 1:
    pgd_per_epoch_by_seed(runs, f'{stem}_pgd_per_epoch.png')
  else:
    pgd_per_epoch(runs, f'{stem}_pgd_per_epoch.png')


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
