"""Without TensorFlow (JAX GPU containers and TPU VM images often lack it): training and
evaluation on local files and on the stream path run, metrics still reach TensorBoard event
files, and the tfds source says what to install. With TensorFlow installed, training and
evaluation on local files do not import it (seconds of start-up and hundreds of MB), nor
matplotlib."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing import event_file_loader

from conftest import DATA_ROOT, REPO_ROOT

# Runs a module as `python -m` would; with argv[1] == 'hide', as if tensorflow,
# tensorflow_datasets and clu were not installed (importlib.util.find_spec finds none of them).
# At exit it prints which of tensorflow and matplotlib it imported.
_RUN = '''
import atexit, importlib.machinery, runpy, sys

class _NotInstalled(importlib.machinery.PathFinder):
  """The path finder, except that it finds no tensorflow, tensorflow_datasets or clu."""

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'clu'):
      return None
    return super().find_spec(name, path, target)

if sys.argv[1] == 'hide':
  sys.meta_path = [_NotInstalled if finder is importlib.machinery.PathFinder else finder
                   for finder in sys.meta_path]
atexit.register(lambda: print('imported:', [name for name in ('tensorflow', 'matplotlib')
                                            if name in sys.modules]))
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name='__main__', alter_sys=True)
'''


def _run(module: str, *args: str, hide_tensorflow: bool) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', _RUN, 'hide' if hide_tensorflow else 'show', module, *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def _scalars(workdir: str) -> dict[str, list[float]]:
  """Every scalar in the run's TensorBoard event files: {tag: [values in order]}."""
  scalars = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(value.simple_value)
  return scalars


def test_main_trains_and_evaluates_on_the_stream_path_without_tensorflow(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _run(
      'latentadv.main', '--config=configs/mnist_fgsm_rs.py:smoke', f'--workdir={workdir}',
      '--config.data.source=local', f'--config.data.dir={os.path.join(DATA_ROOT, "mnist")}',
      '--config.data.pipeline=stream', '--config.data.num_train_examples=256',
      '--config.optim.epochs=1', '--config.eval.n_examples=64',
      '--config.eval.periodic_n_examples=64', hide_tensorflow=True)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert 0.0 <= results['final']['pgd_accuracy'] <= results['final']['clean_accuracy'] <= 1.0
  assert results['state'] == results['kept_state']['state']
  assert results['robust_accuracy'] == results['kept_state']['final']['robust_accuracy']
  scalars = _scalars(workdir)
  assert len(scalars['train/loss']) >= 1 and np.all(np.isfinite(scalars['train/loss']))
  assert scalars['eval/clean_accuracy'] == [results['history'][0]['clean_accuracy']]
  assert scalars['final/pgd_accuracy'] == [results['final']['pgd_accuracy']]
  assert 'steps_per_sec' in scalars

  result = _run(
      'latentadv.evaluate', f'--workdir={workdir}', '--config.eval.suite=pgd',
      '--config.eval.n_examples=64', '--config.eval.pgd.restarts=1', hide_tensorflow=True)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_pgd.json')) as f:
    assert json.load(f)['n_examples'] == 64


def test_tfds_source_without_tensorflow_says_what_to_install(tmp_path):
  result = _run(
      'latentadv.main', '--config=configs/mnist_fgsm_rs.py:smoke',
      f'--workdir={tmp_path / "run"}', '--config.data.source=tfds', hide_tensorflow=True)
  assert result.returncode == 1
  assert 'DataError' in result.stderr and 'pip install tensorflow-datasets' in result.stderr
  assert 'Traceback' not in result.stderr


def test_training_and_evaluation_on_local_files_leave_tensorflow_unimported(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _run('latentadv.main', '--config=configs/mnist_fgsm_rs.py:smoke',
                f'--workdir={workdir}', '--config.data.source=local',
                f'--config.data.dir={os.path.join(DATA_ROOT, "mnist")}',
                '--config.data.num_train_examples=256', '--config.optim.epochs=1',
                '--config.eval.n_examples=64', '--config.eval.periodic_n_examples=64',
                hide_tensorflow=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "imported: []" in result.stdout, result.stdout[-1000:]
  assert 'results.json' in result.stderr  # the result table names the file
  result = _run('latentadv.evaluate', f'--workdir={workdir}', '--config.eval.suite=pgd',
                '--config.eval.n_examples=64', '--config.eval.pgd.restarts=1',
                hide_tensorflow=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "imported: []" in result.stdout, result.stdout[-1000:]
