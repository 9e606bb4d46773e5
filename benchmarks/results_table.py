"""Markdown table of finished runs, read from their results.json files.

  python benchmarks/results_table.py runs/mnist_slat runs/mnist_fgsm_rs runs/mnist_pgd

One row per workdir: method, dataset, model, eps, epochs, clean and PGD accuracy of the final
evaluation (with its attack settings and number of test examples), training time, and training
time relative to the first workdir's.
"""

import json
import os
import sys


def load(workdir: str) -> dict:
  """The results.json record of a finished run in `workdir`."""
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def table(records: list[dict]) -> str:
  """Markdown table (one row per record) of the fields described in the module docstring."""
  lines = ['| method | dataset | model | eps | epochs | clean | PGD | attack | n | train s | time vs first |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  base = records[0]['train_seconds']
  for r in records:
    final = r['final']
    attack = 'PGD-{steps}-{restarts} ({loss})'.format(**final['attacks']['pgd'])
    lines.append(
        f'| {r["method"]} | {r["dataset"]} | {r["model"]} | {r["eps"]:.4g} | {r["epochs"]} | '
        f'{100 * final["clean_accuracy"]:.2f} % | {100 * final["pgd_accuracy"]:.2f} % | {attack} | '
        f'{final["n_examples"]} | {r["train_seconds"]:.0f} | {r["train_seconds"] / base:.2f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  print(table([load(workdir) for workdir in sys.argv[1:]]))
