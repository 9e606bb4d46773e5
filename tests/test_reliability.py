"""Reliability: kill and resume, damaged checkpoints, NaN stops, collapse monitor, bad input."""

import glob
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentadv import base_config
from latentadv import checkpoint
from latentadv import evaluate
from latentadv import collapse_monitor
from latentadv import train_state
from latentadv import train
from latentadv import validation
from latentadv.data import readers

from conftest import DATA_ROOT, REPO_ROOT

MNIST_DIR = os.path.join(DATA_ROOT, 'mnist')


def _smoke_config(method='fgsm_rs'):
  """The MNIST smoke config (8 steps per epoch, 2 epochs); a quick final PGD-2, no periodic one."""
  config = base_config.apply_preset(base_config.mnist(base_config.get_config()), 'smoke')
  config.method.name = method
  config.data.source = 'local'
  config.data.dir = MNIST_DIR
  config.train.eval_every_epochs = 0
  config.eval.n_examples = 64
  config.eval.pgd.steps = 2
  config.eval.pgd.restarts = 1
  return config


def _main_command(workdir: str, *overrides: str,
                  config: str = 'configs/mnist_fgsm_rs.py:smoke') -> list[str]:
  return [sys.executable, '-m', 'latentadv.main', f'--config={config}',
          f'--workdir={workdir}', '--config.data.source=local', f'--config.data.dir={MNIST_DIR}',
          '--config.train.eval_every_epochs=0', '--config.eval.n_examples=64',
          '--config.eval.pgd.steps=2', '--config.eval.pgd.restarts=1', *overrides]


def _steps(workdir: str, subdir: str = 'checkpoints') -> list[int]:
  """The finished checkpoint steps in workdir/subdir, oldest first."""
  directory = os.path.join(workdir, subdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def _files(directory: str) -> list[str]:
  files = [p for p in glob.glob(os.path.join(directory, '**'), recursive=True)
           if os.path.isfile(p)]
  assert files, f'nothing to damage in {directory}'
  return files


def _truncate_files(directory: str):
  """Cuts every file under `directory` to half its length, as an interrupted copy would."""
  for path in _files(directory):
    os.truncate(path, os.path.getsize(path) // 2)


def _garble_files(directory: str):
  """Overwrites every file under `directory` with random bytes of the same length."""
  rng = np.random.default_rng(0)
  for path in _files(directory):
    with open(path, 'wb') as f:
      f.write(rng.bytes(os.path.getsize(path)))


def _final_variables(workdir: str):
  return train_state.restore_variables(workdir, evaluate.load_config(workdir))[1]


def test_a_run_killed_mid_epoch_resumes_to_the_parameters_of_an_uninterrupted_run(tmp_path):
  # 16 steps per epoch, 2 epochs, a checkpoint every 2 steps.
  overrides = ('--config.data.num_train_examples=1024', '--config.train.checkpoint_every_steps=2')
  full_dir, killed_dir = str(tmp_path / 'full'), str(tmp_path / 'killed')
  full_log = tmp_path / 'full.log'
  with full_log.open('w') as log:  # the child keeps its own copy of the file
    full = subprocess.Popen(_main_command(full_dir, *overrides), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)
  victim = subprocess.Popen(_main_command(killed_dir, *overrides), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # SIGKILL once a checkpoint beyond the first ones (steps 1 and 2) exists: during epoch 1.
  while victim.poll() is None and max(_steps(killed_dir), default=0) < 4:
    time.sleep(0.01)
  victim.send_signal(signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
  latest = max(_steps(killed_dir))
  assert 4 <= latest < 32 and not os.path.exists(os.path.join(killed_dir, 'results.json'))

  # A save cut short leaves a temporary directory that orbax never renamed to its step; plant
  # one (half-written) beyond the latest step: the resumed run must ignore and remove it.
  checkpoints = os.path.join(killed_dir, 'checkpoints')
  half_written = os.path.join(checkpoints, f'{latest + 2}.orbax-checkpoint-tmp-1795000000')
  shutil.copytree(os.path.join(checkpoints, str(latest)), half_written)
  _truncate_files(half_written)

  resumed = subprocess.run(_main_command(killed_dir, *overrides), cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {latest} of 32' in resumed.stderr
  assert full.wait(timeout=600) == 0, full_log.read_text()[-3000:]
  chex.assert_trees_all_equal(_final_variables(full_dir), _final_variables(killed_dir))
  assert not glob.glob(os.path.join(checkpoints, '*tmp*'))
  assert _steps(killed_dir) == _steps(full_dir) == [30, 32]


# After a failed read of garbled data, orbax's reader thread posts to its closed event loop.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  config = _smoke_config('standard')
  full_dir, damaged_dir = str(tmp_path / 'full'), str(tmp_path / 'damaged')
  full = train.train_and_evaluate(config, full_dir)
  shutil.copytree(full_dir, damaged_dir)
  os.remove(os.path.join(damaged_dir, 'results.json'))
  assert _steps(damaged_dir) == [8, 16]
  # Garbage in the array data of the newest step (orbax's OCDBT files), its metadata intact.
  newest_state = os.path.join(damaged_dir, 'checkpoints', '16', 'state')
  _garble_files(os.path.join(newest_state, 'd'))
  _garble_files(os.path.join(newest_state, 'ocdbt.process_0'))

  resumed = train.train_and_evaluate(config, damaged_dir)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any('Checkpoint at step 16' in w and 'damaged' in w for w in warnings), warnings
  assert 'Restored step 8; deleted the damaged step(s) [16].' in warnings
  # Resumed from step 8 and retrained epoch 2: the same parameters as the intact run.
  chex.assert_trees_all_equal(_final_variables(full_dir), _final_variables(damaged_dir))
  for key in ('clean_accuracy', 'pgd_accuracy'):
    assert resumed['final'][key] == full['final'][key]
  assert _steps(damaged_dir) == [8, 16]

  for step in (8, 16):
    _truncate_files(os.path.join(damaged_dir, 'checkpoints', str(step)))
  with pytest.raises(checkpoint.CheckpointError) as error:
    train.train_and_evaluate(config, damaged_dir)
  message = str(error.value)
  assert '\n' not in message and 'step 16' in message and 'step 8' in message
  assert 'Fix: delete' in message


def test_a_non_finite_state_is_never_saved(tmp_path):
  checkpoints = checkpoint.Checkpoints(str(tmp_path), every_steps=1, keep=2)
  good = {'w': jnp.ones(3)}
  checkpoints.save(1, good, {'history': []})
  checkpoints.wait_until_finished()
  with pytest.raises(FloatingPointError, match=r'at step 2 .* last good checkpoint is step 1'):
    checkpoints.save(2, {'w': jnp.array([1.0, jnp.inf, 0.0])}, {'history': []})
  assert checkpoints.all_steps() == [1]
  checkpoints.close()


def test_after_a_nan_stop_the_last_good_checkpoint_restores(tmp_path):
  config = _smoke_config('standard')
  config.optim.optimizer = 'sgd'
  config.optim.learning_rate = 0.01
  config.optim.schedule = 'piecewise'  # the learning rate explodes after epoch 1
  config.optim.piecewise_boundaries = (0.5,)
  config.optim.piecewise_factor = 1e30
  with pytest.raises(FloatingPointError, match='last good checkpoint is step 8'):
    train.train_and_evaluate(config, str(tmp_path))
  assert _steps(str(tmp_path))[-1] == 8
  _, variables = train_state.restore_variables(str(tmp_path), config)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables))


def test_track_records_one_collapse_per_drop_below_the_best():
  record = {'best': None, 'collapsed': False, 'collapses': []}
  accuracies = [0.3, 0.5, 0.45, 0.3, 0.1, 0.35, 0.6, 0.39, 0.4]
  collapses = [collapse_monitor.track(record, epoch, 10 * epoch, accuracy, drop=0.2)
               for epoch, accuracy in enumerate(accuracies, start=1)]
  # Epoch 4 drops 0.2 from the best (epoch 2); epoch 5 is still collapsed, not a new collapse;
  # epoch 6 recovers to within 0.2; epoch 8 drops 0.21 from the new best (epoch 7).
  assert [c is not None for c in collapses] == [False, False, False, True, False, False, False,
                                                True, False]
  assert record['collapses'][0] == {'epoch': 4, 'step': 40, 'best_epoch': 2,
                                    'pgd_accuracy_before': 0.5, 'pgd_accuracy_after': 0.3}
  assert record['collapses'][1]['best_epoch'] == 7
  assert record['best'] == {'epoch': 7, 'step': 70, 'pgd_accuracy': 0.6}


@pytest.mark.parametrize('key, value, message', [
    ('collapse_monitor_examples', -1, 'config.train.collapse_monitor_examples = -1 is invalid'),
    ('collapse_drop', 0.0, 'config.train.collapse_drop = 0.0 is invalid: expected an accuracy drop'),
    ('collapse_stop', True, 'config.train.collapse_stop = True is invalid: expected False while'),
    ('collapse_monitor_examples', 99, 'config.train.collapse_monitor_examples = 99 is invalid: expected 0 '
     r'\(monitor off\) or at least 100'),
    ('collapse_monitor_examples', 1000, 'config.train.collapse_monitor_examples = 1000 is invalid: expected '
     'at most the 512 training examples'),
    ('collapse_relative_drop', 1.5, 'config.train.collapse_relative_drop = 1.5 is invalid'),
])
def test_invalid_monitor_keys_are_rejected_with_the_key(key, value, message):
  config = _smoke_config()
  config.train[key] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config)


def test_track_s_relative_drop_catches_a_collapse_from_a_small_best_and_ignores_noise():
  def collapse_epochs(accuracies):
    record = {'best': None, 'collapsed': False, 'collapses': []}
    for epoch, accuracy in enumerate(accuracies, start=1):
      collapse_monitor.track(record, epoch, epoch, accuracy, drop=0.05, relative_drop=0.5)
    return [collapse['epoch'] for collapse in record['collapses']]

  # SLAT at 16/255 on one H200 (PGD-10 per epoch): 26.4 % at best, then 12.0 %. An absolute
  # drop of 0.2 would wait for 6.4 %; half of the best catches it at once.
  assert collapse_epochs([0.25, 0.264, 0.224, 0.25, 0.217, 0.12, 0.038]) == [6]
  assert collapse_epochs([0.25, 0.264, 0.14]) == []  # 12.4 points: less than half of 26.4
  # At tiny accuracies the absolute floor keeps noise out: 6.5 -> 3.0 is not a collapse,
  # 6.5 -> 0.2 is.
  assert collapse_epochs([0.065, 0.03, 0.002]) == [3]


@pytest.mark.parametrize('preset', base_config.PRESETS)
def test_every_single_step_recipe_monitors_collapse_and_the_others_do_not(preset):
  single_step = {'fgsm', 'fgsm_rs', 'slat', 'slat_ga', 'n_fgsm', 'gradalign', 'free'}
  for path in sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '[a-z]*_*.py'))):
    name = os.path.basename(path)[:-3]
    if not name.startswith(('cifar_', 'mnist_')):
      continue
    config = importlib.import_module(f'configs.{name}').get_config(preset)
    expected = base_config.COLLAPSE_MONITOR_EXAMPLES[preset] if config.method.name in single_step else 0
    assert config.train.collapse_monitor_examples == expected, name
    validation.validate(config)


def test_the_monitor_does_not_change_training(tmp_path):
  config = _smoke_config('fgsm_rs')
  config.train.collapse_monitor_examples = 0
  unmonitored = train.train_and_evaluate(config, str(tmp_path / 'off'))
  config.train.collapse_monitor_examples = 128
  monitored = train.train_and_evaluate(config, str(tmp_path / 'on'))
  assert 'collapse_monitor' in monitored and 'collapse_monitor' not in unmonitored
  for key in ('clean_accuracy', 'pgd_accuracy', 'n_examples'):
    assert monitored['final'][key] == unmonitored['final'][key]
  for off, on in zip(unmonitored['history'], monitored['history'], strict=True):
    assert {k: v for k, v in on.items() if not k.startswith('monitor_') and k != 'train_seconds'} == (
        {k: v for k, v in off.items() if k != 'train_seconds'})
  chex.assert_trees_all_equal(
      train_state.restore_variables(str(tmp_path / 'off'), config)[1],
      train_state.restore_variables(str(tmp_path / 'on'), config)[1])


def _collapsing_config():
  """MNIST smoke, standard training whose Adam step grows 30x after epoch 2: a collapse."""
  config = _smoke_config('standard')
  config.method.eps = 0.05
  config.optim.epochs = 4
  config.optim.learning_rate = 3e-3
  config.optim.schedule = 'piecewise'
  config.optim.piecewise_boundaries = (0.5,)
  config.optim.piecewise_factor = 30.0
  config.train.collapse_monitor_examples = 128
  return config


def _clean_accuracy_on_monitored_examples(config, logits_fn) -> float:
  images, labels = readers.load_split(config.data, 'train', 0, 1)
  logits = jax.jit(logits_fn)(images[:128])
  return float(np.mean(np.asarray(logits).argmax(-1) == labels[:128]))


def test_a_collapsed_run_trains_to_the_end_and_hands_back_its_best_state(tmp_path):
  config = _collapsing_config()
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)

  history = {h['epoch']: h for h in results['history']}
  assert sorted(history) == [1, 2, 3, 4] and not results['collapse_monitor']['stopped']
  collapse = results['collapse_monitor']['collapses'][0]
  best = history[collapse['best_epoch']]
  kept = results['kept_state']
  assert kept['state'] == 'best' and kept['collapsed']
  assert (kept['epoch'], kept['step']) == (best['epoch'], best['step'])
  assert kept['final']['pgd_accuracy'] > results['final']['pgd_accuracy']
  assert results['state'] == 'best'
  assert results['robust_accuracy'] == kept['final']['robust_accuracy']

  # load_model, evaluate and export read the kept (best) state unless told 'last'.
  assert _clean_accuracy_on_monitored_examples(config, evaluate.load_model(workdir)) == (
      best['monitor_clean_accuracy'])
  assert _clean_accuracy_on_monitored_examples(
      config, evaluate.load_model(workdir, state='last')) == history[4]['monitor_clean_accuracy']
  config.eval.n_examples = 64
  kept_record = evaluate.evaluate_workdir(workdir, config)
  last_record = evaluate.evaluate_workdir(workdir, config, state='last')
  assert (kept_record['state'], kept_record['checkpoints']) == ('kept', 'checkpoints_best')
  assert (last_record['state'], last_record['checkpoints']) == ('last', 'checkpoints')
  assert kept_record['clean_accuracy'] == kept['final']['clean_accuracy']
  assert last_record['clean_accuracy'] == results['final']['clean_accuracy']
  assert os.path.exists(os.path.join(workdir, 'eval_pgd.json'))
  assert os.path.exists(os.path.join(workdir, 'eval_pgd_last.json'))


def test_collapse_monitor_stops_and_the_final_evaluation_uses_the_best_state(tmp_path):
  config = _collapsing_config()
  config.train.collapse_stop = True
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)

  monitor = results['collapse_monitor']
  assert monitor['stopped'] and len(monitor['collapses']) == 1
  collapse = monitor['collapses'][0]
  history = {h['epoch']: h for h in results['history']}
  assert sorted(history) == [1, 2, 3] and collapse['epoch'] == 3
  best = history[collapse['best_epoch']]
  assert collapse['pgd_accuracy_before'] == best['monitor_pgd_accuracy'] == max(
      h['monitor_pgd_accuracy'] for h in history.values())
  assert collapse['pgd_accuracy_after'] == history[3]['monitor_pgd_accuracy']
  assert collapse['pgd_accuracy_before'] - collapse['pgd_accuracy_after'] >= 0.2

  # The last checkpoint holds the best state: its clean accuracy on the monitored examples is
  # the best epoch's, not the collapsed one's.
  clean = _clean_accuracy_on_monitored_examples(config, evaluate.load_model(workdir))
  assert clean == best['monitor_clean_accuracy'] != history[3]['monitor_clean_accuracy']
  assert _steps(workdir, 'checkpoints_best') == [best['step']]
  assert results['kept_state']['state'] == 'last'  # the best state became the last one
  assert results['kept_state']['step'] == best['step'] and results['kept_state']['collapsed']

  # Running the command again keeps the stopped run as it is.
  again = train.train_and_evaluate(config, workdir)
  for key in ('clean_accuracy', 'pgd_accuracy'):
    assert again['final'][key] == results['final'][key]
  assert again['collapse_monitor'] == monitor


def _write_checkpoint_of_another_model(workdir: str):
  """A workdir whose checkpoint holds a (zero) PreActResNet-18 state for MNIST."""
  config = _smoke_config()
  config.model.name = 'preact_resnet18'
  model = train_state.build_model(config)
  tx = train_state.make_optimizer(config.optim, train_state.learning_rate_schedule(config.optim, 1))
  shapes = jax.eval_shape(lambda rng: train_state.init_state(model, tx, rng, (28, 28, 1)),
                          jax.random.key(0))
  state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  checkpoints = checkpoint.Checkpoints(workdir, every_steps=1, keep=1)
  checkpoints.save(1, state, {'history': [], 'train_seconds': 0.0}, force=True)
  checkpoints.close()


def test_bad_input_ends_with_one_line_naming_the_problem_and_the_fix(tmp_path):
  mismatch_dir = str(tmp_path / 'mismatch')
  _write_checkpoint_of_another_model(mismatch_dir)
  other_config_dir = str(tmp_path / 'other_config')
  os.makedirs(other_config_dir)
  other_config = _smoke_config()
  other_config.method.eps = 0.2
  checkpoint.write_json_atomically(os.path.join(other_config_dir, 'config.json'),
                                   other_config.to_dict())
  misspelt_recipe = tmp_path / 'misspelt.py'
  misspelt_recipe.write_text('from configs import mnist_fgsm_rs\n\n\ndef get_config(preset=""):\n'
                             '  config = mnist_fgsm_rs.get_config(preset)\n'
                             '  config.optim.learnig_rate = 0.1\n  return config\n')
  cases = {  # name: (command, fragments the last line must contain)
      'unknown key': (_main_command(str(tmp_path / 'a'), '--config.method.epsilon=0.1'),
                      ['ConfigError:', '--config.method.epsilon', 'latentadv/base_config.py']),
      'invalid value': (_main_command(str(tmp_path / 'b'), '--config.method.eps=-0.1'),
                        ['ConfigError:', 'config.method.eps = -0.1', 'expected eps >= 0']),
      'wrong data dir': (_main_command(str(tmp_path / 'c'),
                                       f'--config.data.dir={tmp_path / "nowhere"}'),
                         ['DataError:', 'does not exist', 'Fix: point config.data.dir']),
      'mismatched checkpoint': (_main_command(mismatch_dir),
                                ['CheckpointMismatchError:', 'does not match this config',
                                 'Fix: run with the config']),
      'workdir of another config': (_main_command(other_config_dir),
                                    ['CheckpointMismatchError:', 'config.json was written by '
                                     'another config', 'Fix: run with the config written there']),
      'misspelt key in a config file': (
          _main_command(str(tmp_path / 'e'), config=f'{misspelt_recipe}:smoke'),
          ['ConfigError:', 'misspelt.py sets a key the config lacks',
           "did you mean 'learning_rate'?", 'Fix:']),
  }
  runs = {name: subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
          for name, (command, _) in cases.items()}
  for name, run in runs.items():
    _, stderr = run.communicate(timeout=600)
    last_line = stderr.strip().splitlines()[-1]
    assert run.returncode == 1, (name, stderr[-3000:])
    assert 'Traceback' not in stderr, (name, stderr[-3000:])
    assert all(fragment in last_line for fragment in cases[name][1]), (name, last_line)
  # The failed runs did not replace the record of the config the checkpoints belong to.
  assert not os.path.exists(os.path.join(mismatch_dir, 'config.json'))
  assert os.listdir(other_config_dir) == ['config.json']
  assert evaluate.load_config(other_config_dir).method.eps == 0.2
