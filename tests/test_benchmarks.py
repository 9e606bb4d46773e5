"""The benchmark suites' bookkeeping (config files, aggregation over seeds, the table), the
plots, and the throughput benchmark run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest
from absl.testing import flagsaver

from benchmarks import cifar_suite
from benchmarks import mnist_suite
from benchmarks import plots
from benchmarks import suite

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', [cifar_suite, mnist_suite], ids=['cifar', 'mnist'])
def test_every_suite_method_has_a_config_file(module):
  for method in module.METHODS:
    path = os.path.join(REPO_ROOT, 'configs', f'{module.CONFIG_PREFIX}_{method}.py')
    assert os.path.exists(path), path


def test_a_method_without_a_config_file_is_refused_before_anything_runs(tmp_path):
  with flagsaver.flagsaver():
    suite.FLAGS(['cifar_suite', '--methods=standard,no_such_method', f'--root={tmp_path}'])
    with pytest.raises(ValueError, match='configs/cifar_no_such_method.py'):
      suite.run_suite('cifar_suite', 'cifar', cifar_suite.METHODS, [8 / 255])
  assert not os.listdir(tmp_path)


def _run(method, eps, seed_value, seconds):
  return {'method': method, 'eps': eps, 'train_seconds': seconds, 'clean': seed_value,
          'pgd': seed_value / 2, 'autoattack': seed_value / 4, 'pgd_attack': 'PGD-50-10',
          'pgd_examples': 100, 'autoattack_examples': 10}


def test_summary_averages_seeds_and_the_table_reports_time_relative_to_standard():
  runs = [_run('standard', 0.1, 0.9, 10.0), _run('slat', 0.1, 0.6, 20.0),
          _run('slat', 0.1, 0.8, 40.0), _run('slat', 0.2, 0.4, 30.0)]
  rows = {(row['method'], row['eps']): row for row in suite.summarise(runs)}
  slat = rows[('slat', 0.1)]
  assert slat['seeds'] == 2
  assert slat['clean'] == pytest.approx(0.7)
  assert slat['clean_std'] == pytest.approx(0.1)
  assert slat['autoattack'] == pytest.approx(0.175)
  assert slat['train_seconds'] == pytest.approx(30.0)
  lines = suite.table(list(rows.values())).splitlines()
  assert lines[3].startswith('| slat | 0.1 | 2 | 70.00 +- 10.00 | 35.00 +- 5.00 (PGD-50-10, 100)')
  assert lines[3].endswith('| 30 | 3.00 |')
  # standard was trained at eps 0.1 only; its cost does not depend on eps.
  assert lines[4].endswith('| 30 | 3.00 |') and '| 0.2 | 1 | 40.00 |' in lines[4]


def test_norun_tabulates_finished_runs_and_skips_missing_ones(tmp_path):
  final = {'clean_accuracy': 0.9, 'pgd_accuracy': 0.0, 'n_examples': 100,
           'attacks': {'pgd': {'steps': 50, 'restarts': 10}}}
  finished = tmp_path / 'standard_eps0.1_seed0'
  finished.mkdir()
  (finished / 'results.json').write_text(json.dumps(
      {'method': 'standard', 'eps': 0.1, 'train_seconds': 12.0, 'clean_accuracy': 0.9,
       'robust_accuracy': 0.0, 'state': 'last', 'final': final,
       'kept_state': {'state': 'last', 'epoch': 5, 'step': 50, 'final': final},
       'history': []}))
  (finished / 'eval_autoattack.json').write_text(json.dumps(
      {'clean_accuracy': 0.9, 'robust_accuracy': 0.0, 'apgd-ce_accuracy': 0.0,
       'n_examples': 10, 'seconds': 1.0}))
  # Trained, collapsed and kept its best state; its AutoAttack-style suite has not run yet.
  trained = tmp_path / 'slat_eps0.1_seed0'
  trained.mkdir()
  kept = {'state': 'best', 'epoch': 3, 'step': 30,
          'final': dict(final, clean_accuracy=0.5, pgd_accuracy=0.25)}
  (trained / 'results.json').write_text(json.dumps(
      {'method': 'slat', 'eps': 0.1, 'train_seconds': 24.0, 'clean_accuracy': 0.5,
       'robust_accuracy': 0.25, 'state': 'best', 'final': final, 'kept_state': kept, 'collapse_monitor': {'collapses': [{'epoch': 4}]}, 'history': []}))
  output = tmp_path / 'table'
  with flagsaver.flagsaver():
    suite.FLAGS(['mnist_suite', '--methods=standard,slat,fgsm', '--seeds=0', '--eps=0.1',
                 '--norun', f'--root={tmp_path}', f'--output={output}'])
    suite.run_suite('mnist_suite', 'mnist', mnist_suite.METHODS, [0.3])
  assert [run['method'] for run in json.loads((tmp_path / 'table.json').read_text())['runs']
          ] == ['standard', 'slat']
  table = (tmp_path / 'table.md').read_text()
  assert ('| standard | 0.1 | 1 | 90.00 | 0.00 (PGD-50-10, 100) | not monitored | 90.00 / 0.00 '
          '| 0.00 (10) | 12 | 1.00 |') in table
  assert ('| slat | 0.1 | 1 | 90.00 | 0.00 (PGD-50-10, 100) | 1 of 1 (epoch 4) | 50.00 / 25.00 '
          '| not run (1000) | 24 | 2.00 |') in table


def _fake_run_one(calls: list):
  """A suite.run_one that records its (method, seed, eps) and writes a finished run."""

  def run_one(config_prefix, method, seed, eps, workdir):
    del config_prefix
    calls.append((method, seed, eps))
    os.makedirs(workdir, exist_ok=True)
    final = {'clean_accuracy': 0.5, 'pgd_accuracy': 0.25, 'n_examples': 0,
             'attacks': {'pgd': {'steps': 50, 'restarts': 10}}}
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump({'method': method, 'eps': eps, 'train_seconds': 1.0, 'clean_accuracy': 0.5,
                 'robust_accuracy': 0.25, 'state': 'last', 'final': final,
                 'kept_state': {'state': 'last', 'epoch': 1, 'final': final}, 'history': []}, f)
    with open(os.path.join(workdir, 'eval_autoattack.json'), 'w') as f:
      json.dump({'clean_accuracy': 0.5, 'robust_accuracy': 0.2, 'n_examples': 1000,
                 'seconds': 1.0}, f)
  return run_one


def test_a_k_seed_program_is_tabulated_per_seed_and_skips_collapsed_seeds_if_asked(
    tmp_path, monkeypatch):
  calls = []

  def run_one(config_prefix, method, seed, eps, workdir):
    del config_prefix
    calls.append((method, seed, eps, os.path.basename(workdir)))
    os.makedirs(workdir, exist_ok=True)
    records = []
    for k, (pgd, collapsed) in enumerate(((0.3, False), (0.1, True), (0.2, False))):
      final = {'clean_accuracy': 0.5, 'pgd_accuracy': pgd, 'n_examples': 100,
               'attacks': {'pgd': {'steps': 50, 'restarts': 2}}}
      records.append({'seed': seed + k, 'clean_accuracy': 0.5, 'robust_accuracy': 0.25,
                      'state': 'best' if collapsed else 'last', 'final': final, 'history': [],
                      'kept_state': {'state': 'best' if collapsed else 'last', 'epoch': 1,
                                     'final': dict(final, pgd_accuracy=0.25)},
                      'collapse_monitor': {'collapses': [{'epoch': 2}] if collapsed else []}})
      if not collapsed:
        with open(os.path.join(workdir, f'eval_autoattack_seed{k}.json'), 'w') as f:
          json.dump({'clean_accuracy': 0.5, 'robust_accuracy': pgd - 0.1, 'n_examples': 10,
                     'seconds': 1.0}, f)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump({'method': method, 'eps': eps, 'train_seconds': 30.0, 'num_seeds': 3,
                 'seeds': records}, f)

  monkeypatch.setattr(suite, 'run_one', run_one)
  with flagsaver.flagsaver():
    suite.FLAGS(['mnist_suite', '--methods=slat', '--seeds=4', '--num_seeds=3', '--eps=0.1',
                 '--noautoattack_collapsed', f'--root={tmp_path}',
                 f'--output={tmp_path / "table"}'])
    suite.run_suite('mnist_suite', 'mnist', mnist_suite.METHODS, [0.3])
  assert calls == [('slat', 4, 0.1, 'slat_eps0.1_seeds4-6')]
  runs = json.loads((tmp_path / 'table.json').read_text())['runs']
  assert [(run['name'], run['seed'], run['seed_index']) for run in runs] == [
      ('slat_eps0.1_seed4', 4, 0), ('slat_eps0.1_seed5', 5, 1), ('slat_eps0.1_seed6', 6, 2)]
  assert [run['train_seconds'] for run in runs] == [10.0] * 3
  assert runs[1]['autoattack_skipped'] and runs[1]['autoattack'] is None
  table = (tmp_path / 'table.md').read_text()
  assert [run['collapse_epochs'] for run in runs] == [[], [2], []]
  assert ('| slat | 0.1 | 3 | 50.00 +- 0.00 | 20.00 +- 8.16 (PGD-50-2, 100) | 1 of 3 (epoch 2) | '
          '50.00 +- 0.00 / 25.00 +- 0.00 | 15.00 +- 5.00 (10; 2 not collapsed seeds) | 10 |'
          ) in table


def test_paper_scale_runs_the_single_step_methods_at_three_radii_with_the_full_recipe(
    tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite, 'run_one', _fake_run_one(calls))
  output = tmp_path / 'paper'
  with flagsaver.flagsaver():
    suite.FLAGS(['cifar_suite', '--scale=paper', '--jobs=3', '--seeds=0',
                 f'--root={tmp_path / "runs"}', f'--output={output}'])
    cifar_suite.main([])
    assert (suite.FLAGS.preset, suite.FLAGS.pgd_examples) == ('', 0)
  assert sorted(calls) == sorted((method, 0, eps) for method in cifar_suite.PAPER_METHODS
                                 for eps in cifar_suite.PAPER_EPS)
  written = json.loads((tmp_path / 'paper.json').read_text())
  assert written['settings']['preset'] == '' and written['settings']['pgd_examples'] == 0
  assert [(run['method'], run['eps']) for run in written['runs']] == [
      (method, eps) for eps in cifar_suite.PAPER_EPS for method in cifar_suite.PAPER_METHODS]


def test_runs_recorded_in_the_output_count_as_finished_under_the_same_settings_only(tmp_path):
  output = tmp_path / 'table'
  recorded = dict(_run('slat', 0.1, 0.8, 20.0), workdir='runs/x/slat_eps0.1_seed0',
                  history=[])
  settings = {'preset': '', 'overrides': [], 'pgd_examples': None, 'autoattack_examples': 10}
  (tmp_path / 'table.json').write_text(json.dumps({'settings': settings, 'runs': [recorded]}))

  def tabulated_runs(autoattack_examples):
    with flagsaver.flagsaver():
      suite.FLAGS(['mnist_suite', '--methods=slat', '--seeds=0', '--eps=0.1', '--norun',
                   f'--autoattack_examples={autoattack_examples}',
                   f'--root={tmp_path / "empty"}', f'--output={output}'])
      suite.run_suite('mnist_suite', 'mnist', mnist_suite.METHODS, [0.3])
    return json.loads((tmp_path / 'table.json').read_text())['runs']

  assert tabulated_runs(10) == [recorded]
  assert tabulated_runs(20) == []


def test_overrides_of_checkpointing_alone_keep_recorded_runs(tmp_path):
  output = tmp_path / 'table'
  recorded = dict(_run('slat', 0.1, 0.8, 20.0), workdir='runs/x/slat_eps0.1_seed0', history=[])
  settings = {'preset': '', 'overrides': ['train.checkpoint_every_steps=78'],
              'pgd_examples': None, 'autoattack_examples': 10}
  (tmp_path / 'table.json').write_text(json.dumps({'settings': settings, 'runs': [recorded]}))

  def tabulated_runs(*overrides):
    with flagsaver.flagsaver():
      suite.FLAGS(['mnist_suite', '--methods=slat', '--seeds=0', '--eps=0.1', '--norun',
                   '--autoattack_examples=10', f'--overrides={",".join(overrides)}',
                   f'--root={tmp_path / "empty"}', f'--output={output}'])
      suite.run_suite('mnist_suite', 'mnist', mnist_suite.METHODS, [0.3])
    return json.loads((tmp_path / 'table.json').read_text())['runs']

  assert tabulated_runs('train.checkpoints_to_keep=2') == [recorded]
  assert tabulated_runs('optim.epochs=3') == []


def test_the_per_seed_plot_has_a_panel_per_method(tmp_path, monkeypatch):
  runs = [dict(_run(method, 0.1, 0.4, 100.0), seed=k, collapsed=k == 1,
               collapse_epochs=[2] if k == 1 else [], autoattack=None,
               history=[{'epoch': 1, 'pgd_accuracy': 0.2}, {'epoch': 2, 'pgd_accuracy': 0.0}])
          for method in ('slat', 'fgsm_rs', 'n_fgsm') for k in range(3)]
  path = tmp_path / 'seeds.json'
  path.write_text(json.dumps({'settings': {'num_seeds': 3}, 'runs': runs}))
  panels = []
  plot = plots.pgd_per_epoch_by_seed
  monkeypatch.setattr(plots, 'pgd_per_epoch_by_seed', lambda runs, out: (
      panels.append(sorted({run['method'] for run in runs})), plot(runs, out)))
  plots.main(str(path))
  assert panels == [['fgsm_rs', 'n_fgsm', 'slat']]
  assert (tmp_path / 'seeds_pgd_per_epoch.png').stat().st_size > 0
  assert not (tmp_path / 'seeds_robust_vs_time.png').exists()


def test_plots_give_each_of_twelve_methods_its_own_colour_and_write_both_figures(tmp_path):
  methods = [f'method_{i}' for i in range(12)]
  runs = [dict(_run(method, eps, 0.4, 100.0 + i), history=[
      {'epoch': 1, 'pgd_accuracy': 0.2}, {'epoch': 2, 'pgd_accuracy': 0.3}])
          for i, method in enumerate(methods) for eps in (8 / 255, 16 / 255)]
  colours = plots._colours(runs)  # pylint: disable=protected-access
  assert len(set(colours.values())) == len(methods)
  path = tmp_path / 'suite.json'
  path.write_text(json.dumps({'runs': runs}))
  plots.main(str(path))
  assert (tmp_path / 'suite_robust_vs_time.png').stat().st_size > 0
  assert (tmp_path / 'suite_pgd_per_epoch.png').stat().st_size > 0


def _throughput(output_dir, *flags):
  """Runs benchmarks/throughput.py as a user does, on a tiny MNIST CNN, and returns its JSON."""
  subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'benchmarks', 'throughput.py'),
       '--model=mnist_cnn', '--batch_size=8', '--rounds=2', '--round_s=0.01',
       f'--output_dir={output_dir}', *flags], check=True, cwd=output_dir, capture_output=True)
  return json.loads((output_dir / 'throughput_cpu.json').read_text())


def test_throughput_times_each_method_and_k_seeds_and_reports_flops_and_peak_fraction(
    tmp_path):
  results = _throughput(tmp_path, '--methods=standard,pgd', '--dtypes=float32',
                        '--seeds_method=standard', '--num_seeds=2', '--seed_loops=unroll',
                        '--peak_tflops=0.5', '--budget_s=600', '--timing_fraction=0.5')
  runs = {(run['method'], run['seed_loop'], run['num_seeds']): run for run in results['runs']}
  assert sorted(runs) == [('pgd', 'single', 1), ('standard', 'single', 1),
                          ('standard', 'unroll', 2)]
  assert not results['not_measured']
  for run in runs.values():
    assert len(run['seconds_per_round']) == 2 and run['seconds'] > 0
    assert run['flops'] > 0
    assert run['peak_fraction'] == pytest.approx(run['tflops_per_second'] / 0.5)
  assert runs['standard', 'single', 1]['x_standard'] == 1.0
  # PGD-AT's attack is a rolled loop: at least 40 steps dearer than standard training, and
  # counted once in XLA's FLOPs.
  assert runs['pgd', 'single', 1]['x_standard'] > 5
  assert runs['pgd', 'single', 1]['flops_lower_bound']
  assert not runs['standard', 'single', 1]['flops_lower_bound']
  two = runs['standard', 'unroll', 2]
  assert two['flops'] == pytest.approx(2 * runs['standard', 'single', 1]['flops'], rel=0.05)
  assert two['speedup_vs_single_runs'] == pytest.approx(
      2 * runs['standard', 'single', 1]['seconds'] / two['seconds'])
  assert results['machine']['peak_source'] == '--peak_tflops'
  table = (tmp_path / 'throughput_cpu.md').read_text()
  assert '| pgd | float32 |' in table and '| >= ' in table


def test_throughput_stops_at_its_budget_and_writes_what_it_did_not_reach(tmp_path):
  results = _throughput(tmp_path, '--methods=standard,slat', '--dtypes=float32',
                        '--num_seeds=2', '--budget_s=0')
  assert results['runs'] == []
  assert [case['method'] for case in results['not_measured']] == ['standard', 'slat', 'slat',
                                                                 'slat']
  assert results['machine']['peak_tflops'] == {'float32': None}
  assert 'Not reached within the budget: standard float32 single K=1' in (
      tmp_path / 'throughput_cpu.md').read_text()


def _workdir(path, results, params):
  """A workdir with `results` as results.json and one checkpoint (step 4) of `params`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  os.makedirs(path)
  (path / 'results.json').write_text(json.dumps(results))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(path / 'checkpoints' / '4' / 'state'), {'params': params})
  return str(path)


def _same_run(a, b):
  """Runs benchmarks/same_run.py as a user does; returns (exit status, output lines)."""
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'benchmarks', 'same_run.py'),
                           a, b], capture_output=True, text=True, check=False)
  return result.returncode, result.stdout.splitlines()


def test_same_run_finds_a_changed_figure_or_bit_and_ignores_timings(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  params = {'w': np.linspace(0, 1, 6, dtype=np.float32)}
  results = {'final': {'clean_accuracy': 0.5, 'seconds': 3.0}, 'history': [{'epoch': 1}]}
  reference = _workdir(tmp_path / 'a', results, params)
  slower = _workdir(tmp_path / 'b', {**results, 'final': {'clean_accuracy': 0.5, 'seconds': 9.0},
                                      'new_key': 1}, params)
  status, lines = _same_run(reference, slower)
  assert status == 0 and lines[0] == 'only in B: new_key' and lines[-1].endswith('the same run')
  nudged = {'w': params['w'].copy()}
  nudged['w'][3] = np.nextafter(nudged['w'][3], np.float32(2))
  changed = _workdir(tmp_path / 'c', {**results, 'final': {'clean_accuracy': 0.25}}, nudged)
  status, lines = _same_run(reference, changed)
  differences = [line for line in lines if line.startswith('DIFFERENT')]
  assert status == 1 and len(differences) == 2 and lines[-1].endswith('2 differences')
  assert differences[0] == 'DIFFERENT final.clean_accuracy: 0.5 != 0.25'
  assert 'params/w: differs' in differences[1]
