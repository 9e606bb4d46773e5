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
--num_seeds=K > 1 trains K seeds as one program per (method, eps) and first seed s of --seeds
(config.num_seeds = K, config.seed = s, run directory <method>_eps<eps>_seeds<s>-<s+K-1>),
evaluates each model (latentadv.evaluate --seed_index=k) and tabulates them as K runs: the
JSON has one record per model (its program's train seconds divided by K); the table, mean +-
std over all seeds of a (method, eps) and how many collapsed. --noautoattack_collapsed skips
the AutoAttack-style suite for the seeds that collapsed (their kept state is the best one).
Training times come from runs that may share the machine with other work: the ratios in
benchmarks/throughput.py are the fair cost comparison.
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
flags.DEFINE_list('seeds', ['0', '1'], 'Training seeds (with --num_seeds=K > 1: the first seed '
                  'of each K-seed program).')
flags.DEFINE_integer('num_seeds', 1, 'Seeds per program: K > 1 trains seeds s, ..., s + K - 1 '
                     'of each --seeds value s as one K-seed program (config.num_seeds) per '
                     '(method, eps).')
flags.DEFINE_bool('autoattack_collapsed', True, 'Run the AutoAttack-style suite on the kept '
                  '(best) state of seeds that collapsed too; --noautoattack_collapsed skips '
                  'them (tabulated over the other seeds).')
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
  """Trains and evaluates one (method, eps) program of --num_seeds seeds from `seed` into
  workdir, unless already done; the AutoAttack-style suite runs per seed (eval_autoattack.json,
  or eval_autoattack_seed<k>.json for seed index k of a program of several)."""
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, 'log.txt')
  data_flags = (['--config.data.source=local', f'--config.data.dir={FLAGS.data_dir}']
                if FLAGS.data_dir else [])
  config = f'configs/{config_prefix}_{method}.py' + (f':{FLAGS.preset}' if FLAGS.preset else '')
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    _run([sys.executable, '-m', 'latentadv.main', f'--config={config}', f'--workdir={workdir}',
          f'--config.seed={seed}', f'--config.method.eps={eps}',
          *([f'--config.num_seeds={FLAGS.num_seeds}'] if FLAGS.num_seeds > 1 else []),
          *([f'--config.eval.n_examples={FLAGS.pgd_examples}']
            if FLAGS.pgd_examples is not None else []), *data_flags,
          *[f'--config.{o}' for o in FLAGS.overrides]], log_path)
  for seed_index in _seed_indices():
    if os.path.exists(_autoattack_path(workdir, seed_index)):
      continue
    if not FLAGS.autoattack_collapsed and _load(workdir, seed_index)['collapsed']:
      continue
    _run([sys.executable, '-m', 'latentadv.evaluate', f'--workdir={workdir}',
          '--config.eval.suite=autoattack',
          *([] if seed_index is None else [f'--seed_index={seed_index}']),
          f'--config.eval.n_examples={FLAGS.autoattack_examples}', *data_flags], log_path)


def _seed_indices() -> list[int | None]:
  """The seed indices of one program: [None] for single-seed runs, else 0, ..., K - 1."""
  return [None] if FLAGS.num_seeds == 1 else list(range(FLAGS.num_seeds))


def _autoattack_path(workdir: str, seed_index: int | None) -> str:
  """Where latentadv.evaluate writes one model's AutoAttack-style record."""
  return os.path.join(workdir, 'eval_autoattack' + (
      '' if seed_index is None else f'_seed{seed_index}') + '.json')


def _done(workdir: str) -> bool:
  """True once a program's every model has its AutoAttack-style record, or was skipped as
  collapsed (--noautoattack_collapsed)."""
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    return False
  return all(os.path.exists(_autoattack_path(workdir, k)) or (
      not FLAGS.autoattack_collapsed and _load(workdir, k)['collapsed'])
             for k in _seed_indices())


def _load(workdir: str, seed_index: int | None = None) -> dict:
  """One model's summary from its program's results.json (seed index `seed_index` of a
  program of several seeds) and, once it exists, its AutoAttack-style record (run on the kept
  state; None before it finished or where it was skipped). The train seconds of a K-seed
  program are divided among its K models (`program_train_seconds` holds the total)."""
  with open(os.path.join(workdir, 'results.json')) as f:
    program = json.load(f)
  results = program if seed_index is None else {**program, **program['seeds'][seed_index]}
  run = {
      'workdir': os.path.relpath(workdir, REPO_ROOT), 'method': results['method'],
      'eps': results['eps'], 'seed_index': seed_index,
      'train_seconds': results['train_seconds'] / program.get('num_seeds', 1),
      'program_train_seconds': results['train_seconds'],
      'clean': results['final']['clean_accuracy'], 'pgd': results['final']['pgd_accuracy'],
      'pgd_examples': results['final']['n_examples'],
      'pgd_attack': 'PGD-{steps}-{restarts}'.format(**results['final']['attacks']['pgd']),
      # None: trained without the collapse monitor.
      'collapsed': (bool(results['collapse_monitor']['collapses']) if 'collapse_monitor' in results
                    else None),
      'collapse_epochs': ([collapse['epoch'] for collapse in results['collapse_monitor']['collapses']]
                          if 'collapse_monitor' in results else None),
      'kept_state': results['state'], 'kept_epoch': results['kept_state']['epoch'],
      'kept_clean': results['clean_accuracy'], 'kept_pgd': results['robust_accuracy'],
      'autoattack_clean': None, 'autoattack': None, 'autoattack_per_attack': None,
      'autoattack_examples': FLAGS.autoattack_examples, 'autoattack_seconds': None,
      'autoattack_skipped': False, 'history': results['history'],
  }
  path = _autoattack_path(workdir, seed_index)
  if os.path.exists(path):
    with open(path) as f:
      autoattack = json.load(f)
    run.update(
        autoattack_clean=autoattack['clean_accuracy'], autoattack=autoattack['robust_accuracy'],
        autoattack_per_attack={k: v for k, v in autoattack.items()
                               if k.endswith('_accuracy') and k != 'robust_accuracy'},
        autoattack_examples=autoattack['n_examples'], autoattack_seconds=autoattack['seconds'])
  else:
    run['autoattack_skipped'] = not FLAGS.autoattack_collapsed and bool(run['collapsed'])
  return run


def _recorded_runs(path: str, settings: dict) -> dict[str, dict]:
  """The runs of an earlier output at `path`, by run directory name, if it was made with the
  same preset, overrides and evaluation sizes; {} otherwise."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    earlier = json.load(f)
  same = ('preset', 'pgd_examples', 'autoattack_examples')
  if any(earlier['settings'].get(key) != settings[key] for key in same) or (
      _result_overrides(earlier['settings'].get('overrides', []))
      != _result_overrides(settings['overrides'])):
    logging.warning('%s was made with other settings; its runs are not reused.', path)
    return {}
  return {run.get('name', os.path.basename(run['workdir'])): run for run in earlier['runs']}


def _result_overrides(overrides: list[str]) -> list[str]:
  """The overrides that can change a run's results: all but those of how often and how many
  checkpoints are kept (train.checkpoint_every_steps, train.checkpoints_to_keep)."""
  return sorted(o for o in overrides if not o.startswith(('train.checkpoint_every_steps=',
                                                          'train.checkpoints_to_keep=')))


def summarise(runs: list[dict]) -> list[dict]:
  """Per (method, eps): mean and std over seeds of clean, pgd, the kept state's clean and pgd
  (the last state's where a run predates the kept state), autoattack (over the seeds it ran
  on, all but those skipped as collapsed; None unless each of them has it) and train_seconds
  (per model); how many seeds collapsed (None unless every seed was monitored) and the epoch
  of each collapsed seed's first collapse."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['eps']), []).append(run)
  rows = []
  for (method, eps), group in groups.items():
    row = {'method': method, 'eps': eps, 'seeds': len(group), 'pgd_attack': group[0]['pgd_attack'],
           'pgd_examples': group[0]['pgd_examples'],
           'autoattack_examples': group[0]['autoattack_examples'],
           'collapsed': (None if any(run.get('collapsed') is None for run in group)
                         else sum(run['collapsed'] for run in group)),
           'collapse_epochs': [(run.get('collapse_epochs') or [None])[0] for run in group
                               if run.get('collapsed')]}
    values = {key: [run[key] for run in group] for key in ('clean', 'pgd', 'train_seconds')}
    evaluated = [run for run in group if not run.get('autoattack_skipped')]
    values['autoattack'] = [run['autoattack'] for run in evaluated] or [None]
    row['autoattack_seeds'] = len(evaluated)
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


def _autoattack_cell(row: dict) -> str:
  """The AutoAttack-style cell of a row: over every seed, or over the seeds that did not
  collapse when the others were skipped (--noautoattack_collapsed)."""
  evaluated = row.get('autoattack_seeds', row['seeds'])
  if not evaluated:
    return f'skipped: all {row["seeds"]} seeds collapsed ({row["autoattack_examples"]})'
  return f'{_percent(row, "autoattack")} ({row["autoattack_examples"]}' + (
      f'; {evaluated} not collapsed seeds' if evaluated < row['seeds'] else '') + ')'


def _epochs(row: dict) -> str:
  """' (epochs 2, 3)': the epochs of the row's collapses, where the runs record them."""
  epochs = [epoch for epoch in row.get('collapse_epochs', []) if epoch is not None]
  return f' (epoch{"s" if len(epochs) > 1 else ""} {", ".join(map(str, epochs))})' if epochs else ''


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
             else f'{row["collapsed"]} of {row["seeds"]}' + _epochs(row),
             f'{_percent(row, "kept_clean")} / {_percent(row, "kept_pgd")}',
             _autoattack_cell(row)]
    lines.append(f'| {row["method"]} | {row["eps"]:.4g} | {row["seeds"]} | '
                 f'{" | ".join(cells)} | {row["train_seconds"]:.0f} | {relative} |')
  return '\n'.join(lines)


def _program_name(method: str, eps: float, seed: int) -> str:
  """The run directory of the (method, eps) program whose first seed is `seed`."""
  if FLAGS.num_seeds == 1:
    return f'{method}_eps{eps:.4g}_seed{seed}'
  return f'{method}_eps{eps:.4g}_seeds{seed}-{seed + FLAGS.num_seeds - 1}'


def _model_names(method: str, eps: float, seed: int) -> list[str]:
  """The names of the models of that program, one per seed."""
  return [f'{method}_eps{eps:.4g}_seed{seed + k}' for k in range(FLAGS.num_seeds)]


def _load_program(workdir: str, method: str, eps: float, seed: int) -> dict[str, dict]:
  """{model name: _load record} of every model of the program in workdir."""
  return {name: {**_load(workdir, seed_index), 'name': name, 'seed': seed + k}
          for k, (name, seed_index) in enumerate(zip(_model_names(method, eps, seed),
                                                     _seed_indices()))}


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
              'seeds': FLAGS.seeds, 'num_seeds': FLAGS.num_seeds, 'overrides': FLAGS.overrides,
              'pgd_examples': FLAGS.pgd_examples,
              'autoattack_examples': FLAGS.autoattack_examples}
  recorded = _recorded_runs(output + '.json', settings)
  planned = [(method, int(seed), eps) for eps in eps_values for method in methods
             for seed in FLAGS.seeds]
  to_run, runs_by_name = [], {}
  for method, seed, eps in planned:
    workdir = os.path.join(root, _program_name(method, eps, seed))
    names = _model_names(method, eps, seed)
    finished = _done(workdir)
    if not finished and all(name in recorded for name in names) and (
        not FLAGS.run or all(recorded[name].get('autoattack') is not None for name in names)):
      logging.info('Recorded in %s.json, not repeated: %s', output, ', '.join(names))
      runs_by_name.update((name, recorded[name]) for name in names)
    elif FLAGS.run:
      to_run.append((method, seed, eps))
    elif os.path.exists(os.path.join(workdir, 'results.json')):
      if not finished:
        logging.warning('AutoAttack-style suite not finished, tabulated as not run: %s', workdir)
      runs_by_name.update(_load_program(workdir, method, eps, seed))
    else:
      logging.warning('Not finished, left out: %s', workdir)
  with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
    list(pool.map(lambda job: run_one(config_prefix, job[0], job[1], job[2], os.path.join(
        root, _program_name(job[0], job[2], job[1]))), to_run))
  for method, seed, eps in to_run:
    runs_by_name.update(_load_program(os.path.join(root, _program_name(method, eps, seed)),
                                      method, eps, seed))
  runs = [runs_by_name[name] for method, seed, eps in planned
          for name in _model_names(method, eps, seed) if name in runs_by_name]
  selected = {run.get('name', os.path.basename(run['workdir'])) for run in runs}
  runs += [run for name, run in recorded.items() if name not in selected]
  rows = summarise(runs)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output + '.json', 'w') as f:
    json.dump({'settings': settings, 'summary': rows, 'runs': runs}, f, indent=1)
  with open(output + '.md', 'w') as f:
    f.write(table(rows) + '\n')
  print(table(rows))
