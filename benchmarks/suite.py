"""Train every method of a benchmark with the same budget and seeds, evaluate, tabulate.

The engine of `mnist_suite.py` and `cifar_suite.py`. For each (method, seed) it runs
  python -m latentadv.main --config=configs/<prefix>_<method>.py[:preset] --workdir=ROOT/<run>
(its final evaluation is the config's PGD, e.g. PGD-50-10, on --pgd_examples test images), then
  python -m latentadv.evaluate --workdir=ROOT/<run> --config.eval.suite=autoattack
on the first --autoattack_examples test images (it attacks the run's kept state: the best one
where the collapse monitor saw training collapse, else the last). --jobs=N runs N (method,
seed, eps) runs at a time, e.g. sharing one GPU. Runs whose results exist are not repeated, so
an interrupted suite continues where it stopped (--norun only tabulates the finished runs,
e.g. while the others are still training). Runs recorded in an existing OUTPUT.json with the
same settings count as finished too, so a suite can be extended on a machine that does not
hold the earlier run directories (another --output starts afresh), and recorded runs that this
invocation did not select (other --methods, --eps or --seeds) are kept. It then writes OUTPUT.json
(every run and the per-method means over seeds) and OUTPUT.md (a markdown table: clean and PGD
of the last state, how many seeds collapsed, clean and PGD of the kept state, AutoAttack-style
worst case of the kept state, train time and train time relative to `standard`; mean +- std
over seeds when there are several). With --norun, a trained run whose AutoAttack-style suite
has not finished is tabulated with "not run" there.
Training times come from runs that may share the machine with other work: the ratios in
benchmarks/step_cost.py are the fair cost comparison.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import numpy as np
from absl import flags
from absl import logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_list('methods', None, 'Methods to run (default: the suite\'s list).')
flags.DEFINE_list('seeds', ['0', '1'], 'Training seeds.')
flags.DEFINE_string('preset', '', 'Config preset (e.g. "cpu").')
flags.DEFINE_list('eps', None, 'Training and evaluation radii (default: the suite\'s).')
flags.DEFINE_string('data_dir', '', 'Canonical data files ("" = tfds).')
flags.DEFINE_string('root', None, 'Directory for the runs (default: runs/<suite>).')
flags.DEFINE_integer('pgd_examples', None, 'Final PGD evaluation on the first n test images '
                     '(0 = all; default: the config\'s).')
flags.DEFINE_integer('autoattack_examples', 1000, 'AutoAttack-style suite on the first n.')
flags.DEFINE_string('output', None, 'Output path without extension (default: '
                    'benchmarks/results/<suite>).')
flags.DEFINE_bool('run', True, 'Train and evaluate missing runs; --norun tabulates the '
                  'finished runs only and lists the missing ones.')
flags.DEFINE_integer('jobs', 1, 'Runs trained and evaluated at the same time (several share '
                     'one GPU well: a run of batch 128 leaves most of it idle); each gets '
                     '0.9 / jobs of the accelerator memory unless XLA_PYTHON_CLIENT_MEM_FRACTION '
                     'is set.')
flags.DEFINE_list('overrides', [], 'Extra --config.* overrides for every run, e.g. '
                  'optim.epochs=5.')


def _run(command: list[str], log_path: str):
  """Runs `command` in the repo root, appending its output to log_path; raises on failure."""
  logging.info('%s', ' '.join(command))
  env = dict(os.environ)
  if FLAGS.jobs > 1:
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / FLAGS.jobs:.3f}')
  with open(log_path, 'a') as log:
    result = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=env)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}); see {log_path}.')


def run_one(config_prefix: str, method: str, seed: int, eps: float, workdir: str):
  """Trains and evaluates one (method, seed, eps) into workdir unless already done."""
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, 'log.txt')
  data_flags = (['--config.data.source=local', f'--config.data.dir={FLAGS.data_dir}']
                if FLAGS.data_dir else [])
  config = f'configs/{config_prefix}_{method}.py' + (f':{FLAGS.preset}' if FLAGS.preset else '')
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    _run([sys.executable, '-m', 'latentadv.main', f'--config={config}', f'--workdir={workdir}',
          f'--config.seed={seed}', f'--config.method.eps={eps}',
          *([f'--config.eval.n_examples={FLAGS.pgd_examples}']
            if FLAGS.pgd_examples is not None else []), *data_flags,
          *[f'--config.{o}' for o in FLAGS.overrides]], log_path)
  if not os.path.exists(os.path.join(workdir, 'eval_autoattack.json')):
    _run([sys.executable, '-m', 'latentadv.evaluate', f'--workdir={workdir}',
          '--config.eval.suite=autoattack',
          f'--config.eval.n_examples={FLAGS.autoattack_examples}', *data_flags], log_path)


def _load(workdir: str) -> dict:
  """One run's summary from its results.json and, once it exists, eval_autoattack.json (the
  AutoAttack-style suite runs on the kept state; None before it finished)."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  kept = results.get('kept_state', {'state': 'last', 'final': results['final']})
  run = {
      'workdir': os.path.relpath(workdir, REPO_ROOT), 'method': results['method'],
      'eps': results['eps'], 'train_seconds': results['train_seconds'],
      'clean': results['final']['clean_accuracy'], 'pgd': results['final']['pgd_accuracy'],
      'pgd_examples': results['final']['n_examples'],
      'pgd_attack': 'PGD-{steps}-{restarts}'.format(**results['final']['attacks']['pgd']),
      # None: trained without the collapse monitor.
      'collapsed': (bool(results['co_monitor']['collapses']) if 'co_monitor' in results
                    else None),
      'kept_state': kept['state'], 'kept_epoch': kept.get('epoch'),
      'kept_clean': kept['final']['clean_accuracy'], 'kept_pgd': kept['final']['pgd_accuracy'],
      'autoattack_clean': None, 'autoattack': None, 'autoattack_per_attack': None,
      'autoattack_examples': FLAGS.autoattack_examples, 'autoattack_seconds': None,
      'history': results['history'],
  }
  path = os.path.join(workdir, 'eval_autoattack.json')
  if os.path.exists(path):
    with open(path) as f:
      autoattack = json.load(f)
    run.update(
        autoattack_clean=autoattack['clean_accuracy'], autoattack=autoattack['robust_accuracy'],
        autoattack_per_attack={k: v for k, v in autoattack.items()
                               if k.endswith('_accuracy') and k != 'robust_accuracy'},
        autoattack_examples=autoattack['n_examples'], autoattack_seconds=autoattack['seconds'])
  return run


def _recorded_runs(path: str, settings: dict) -> dict[str, dict]:
  """The runs of an earlier output at `path`, by run directory name, if it was made with the
  same preset, overrides and evaluation sizes; {} otherwise."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    earlier = json.load(f)
  same = ('preset', 'overrides', 'pgd_examples', 'autoattack_examples')
  if any(earlier['settings'].get(key) != settings[key] for key in same):
    logging.warning('%s was made with other settings; its runs are not reused.', path)
    return {}
  return {os.path.basename(run['workdir']): run for run in earlier['runs']}


def summarise(runs: list[dict]) -> list[dict]:
  """Per (method, eps): mean and std over seeds of clean, pgd, the kept state's clean and pgd
  (the last state's where a run predates the kept state), autoattack (None unless every seed
  has it) and train_seconds; how many seeds collapsed (None unless every seed was monitored)."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['eps']), []).append(run)
  rows = []
  for (method, eps), group in groups.items():
    row = {'method': method, 'eps': eps, 'seeds': len(group), 'pgd_attack': group[0]['pgd_attack'],
           'pgd_examples': group[0]['pgd_examples'],
           'autoattack_examples': group[0]['autoattack_examples'],
           'collapsed': (None if any(run.get('collapsed') is None for run in group)
                         else sum(run['collapsed'] for run in group))}
    values = {key: [run[key] for run in group] for key in
              ('clean', 'pgd', 'autoattack', 'train_seconds')}
    values['kept_clean'] = [run.get('kept_clean', run['clean']) for run in group]
    values['kept_pgd'] = [run.get('kept_pgd', run['pgd']) for run in group]
    for key, numbers in values.items():
      known = None not in numbers
      row[key] = float(np.mean(numbers)) if known else None
      row[f'{key}_std'] = float(np.std(numbers)) if known else None
    rows.append(row)
  return rows


def _percent(row: dict, key: str) -> str:
  """'mean' or 'mean +- std' in percent over the row's seeds; 'not run' for None."""
  if row[key] is None:
    return 'not run'
  return f'{100 * row[key]:.2f}' + (f' +- {100 * row[key + "_std"]:.2f}'
                                    if row['seeds'] > 1 else '')


def table(rows: list[dict]) -> str:
  """Markdown table of `summarise` rows; time relative to `standard` at the same eps, or at
  any eps when the suite trained it at one only (its cost does not depend on eps). Clean and
  PGD are the last state's; the kept state (the best one where the collapse monitor saw a
  collapse, else the last) has its own clean / PGD column, and the AutoAttack-style suite is
  run on it."""
  standard = {row['eps']: row['train_seconds'] for row in rows if row['method'] == 'standard'}
  for row in rows:
    if standard and row['eps'] not in standard:
      standard[row['eps']] = next(iter(standard.values()))
  lines = ['| method | eps | seeds | clean | PGD (attack, n) | collapsed | kept state: clean / PGD '
           '| AutoAttack-style, kept state (n) | train s | x standard |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for row in rows:
    relative = (f'{row["train_seconds"] / standard[row["eps"]]:.2f}'
                if row['eps'] in standard else '-')
    cells = [_percent(row, 'clean'), f'{_percent(row, "pgd")} ({row["pgd_attack"]}, '
             f'{row["pgd_examples"]})', 'not monitored' if row.get('collapsed') is None
             else f'{row["collapsed"]} of {row["seeds"]}',
             f'{_percent(row, "kept_clean")} / {_percent(row, "kept_pgd")}',
             f'{_percent(row, "autoattack")} ({row["autoattack_examples"]})']
    lines.append(f'| {row["method"]} | {row["eps"]:.4g} | {row["seeds"]} | '
                 f'{" | ".join(cells)} | {row["train_seconds"]:.0f} | {relative} |')
  return '\n'.join(lines)


def run_suite(suite: str, config_prefix: str, default_methods: list[str],
              default_eps: list[float]):
  """Runs the suite per the flags (defaults: `default_methods`, `default_eps`) and writes
  its JSON and markdown outputs."""
  methods = FLAGS.methods or default_methods
  eps_values = [float(e) for e in FLAGS.eps] if FLAGS.eps else default_eps
  missing = [f'configs/{config_prefix}_{m}.py' for m in methods
             if not os.path.exists(os.path.join(REPO_ROOT, 'configs', f'{config_prefix}_{m}.py'))]
  if missing:
    raise ValueError(f'No config file {", ".join(missing)}: --methods must name methods with '
                     f'a configs/{config_prefix}_<method>.py file.')
  root = FLAGS.root or os.path.join(REPO_ROOT, 'runs', suite)
  output = FLAGS.output or os.path.join(REPO_ROOT, 'benchmarks', 'results', suite)
  settings = {'suite': suite, 'configs': f'configs/{config_prefix}_<method>.py', 'preset': FLAGS.preset,
              'seeds': FLAGS.seeds, 'overrides': FLAGS.overrides,
              'pgd_examples': FLAGS.pgd_examples,
              'autoattack_examples': FLAGS.autoattack_examples}
  recorded = _recorded_runs(output + '.json', settings)
  planned = [(method, seed, eps, f'{method}_eps{eps:.4g}_seed{seed}')
             for eps in eps_values for method in methods for seed in FLAGS.seeds]
  to_run, runs_by_name = [], {}
  for method, seed, eps, name in planned:
    workdir = os.path.join(root, name)
    finished = os.path.exists(os.path.join(workdir, 'eval_autoattack.json'))
    if not finished and name in recorded and (
        not FLAGS.run or recorded[name].get('autoattack') is not None):
      logging.info('Recorded in %s.json, not repeated: %s', output, name)
      runs_by_name[name] = recorded[name]
    elif FLAGS.run:
      to_run.append((method, seed, eps, name))
    elif os.path.exists(os.path.join(workdir, 'results.json')):
      if not finished:
        logging.warning('AutoAttack-style suite not finished, tabulated as not run: %s', workdir)
      runs_by_name[name] = _load(workdir)
    else:
      logging.warning('Not finished, left out: %s', workdir)
  with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
    list(pool.map(lambda job: run_one(config_prefix, job[0], int(job[1]), job[2],
                                      os.path.join(root, job[3])), to_run))
  for *_, name in to_run:
    runs_by_name[name] = _load(os.path.join(root, name))
  runs = [runs_by_name[name] for *_, name in planned if name in runs_by_name]
  selected = {os.path.basename(run['workdir']) for run in runs}
  runs += [run for name, run in recorded.items() if name not in selected]
  rows = summarise(runs)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output + '.json', 'w') as f:
    json.dump({'settings': settings, 'summary': rows, 'runs': runs}, f, indent=1)
  with open(output + '.md', 'w') as f:
    f.write(table(rows) + '\n')
  print(table(rows))
