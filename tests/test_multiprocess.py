"""Multi-process training: the data each process reads, real 2-process runs on 127.0.0.1, and a
2-process run stopped by SIGTERM to one process and resumed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from latentadv import evaluate
from latentadv import parallel
from latentadv import preemption
from latentadv import train_state
from latentadv.data import readers

from conftest import DATA_ROOT, REPO_ROOT

# 4 epochs of 8 steps (512 examples, global batch 64) and a small final evaluation.
_STEPS = 32
_RUN_FLAGS = ('--config=configs/mnist_fgsm_rs.py:smoke', '--config.data.source=local',
              f'--config.data.dir={os.path.join(DATA_ROOT, "mnist")}', '--config.optim.epochs=4',
              '--config.train.eval_every_epochs=0', '--config.eval.n_examples=64',
              '--config.eval.batch_size=64', '--config.eval.pgd.steps=1',
              '--config.eval.pgd.restarts=1')


@pytest.mark.parametrize('process_count', [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(process_count):
  labels = np.arange(50, dtype=np.int32)
  images = np.broadcast_to(labels[:, None, None, None], (50, 2, 2, 1)).astype(np.float32)
  single = readers.MemoryBatches(images, labels, batch_size=8, seed=3)
  parts = [readers.MemoryBatches(images, labels, batch_size=8, seed=3, process_index=p,
                                 process_count=process_count) for p in range(process_count)]
  assert all(part.steps_per_epoch == single.steps_per_epoch == 6 for part in parts)
  for step in (0, 5, 6, 13):  # Across an epoch boundary, and an epoch visited out of order.
    pieces = [part.batch(step) for part in parts]
    assert all(len(piece['label']) == 8 // process_count for piece in pieces)
    chex.assert_trees_all_equal(
        single.batch(step), jax.tree.map(lambda *x: np.concatenate(x), *pieces))


def test_train_stream_rejects_a_batch_that_does_not_split_over_processes():
  images, labels = np.zeros((50, 2, 2, 1), np.float32), np.zeros(50, np.int32)
  with pytest.raises(ValueError, match='divisible by the number of processes'):
    readers.MemoryBatches(images, labels, batch_size=9, seed=0, process_index=0, process_count=2)


def test_single_process_runs_do_not_start_the_distributed_runtime(monkeypatch):
  for name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert not parallel.initialize()
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert not parallel.initialize()


def _launch(workdir: str) -> subprocess.Popen:
  """launch/local_multiprocess.sh: 2 processes x 2 CPU devices, training into `workdir`."""
  return subprocess.Popen(
      ['bash', os.path.join(REPO_ROOT, 'launch', 'local_multiprocess.sh'), '2', *_RUN_FLAGS,
       f'--workdir={workdir}'], cwd=REPO_ROOT,
      env={**os.environ, 'PYTHON': sys.executable, 'DEVICES_PER_PROCESS': '2'},
      stderr=subprocess.PIPE, text=True)


def _params(workdir: str):
  return train_state.restore_variables(workdir, evaluate.load_config(workdir))[1]['params']


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory) -> tuple[str, str]:
  """The workdir and stderr of an uninterrupted 2-process run."""
  workdir = str(tmp_path_factory.mktemp('two_processes'))
  _, stderr = (launched := _launch(workdir)).communicate(timeout=600)
  assert launched.returncode == 0, stderr[-3000:]
  return workdir, stderr


def test_two_processes_train_the_same_parameters_as_one(tmp_path, two_process_run):
  """2 processes x 2 CPU devices (launch/local_multiprocess.sh) vs 1 process x 4 devices."""
  two, launched_stderr = two_process_run
  one = str(tmp_path / 'one_process')
  single = subprocess.run(
      [sys.executable, '-m', 'latentadv.main', *_RUN_FLAGS, f'--workdir={one}'], cwd=REPO_ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '4'},
      capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  assert launched_stderr.count('fgsm_rs on mnist (mnist_cnn') == 1  # Process 0 logs alone.

  for workdir in (one, two):
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    assert results['devices'] == 4 and results['steps'] == _STEPS
  params = [_params(workdir) for workdir in (one, two)]
  max_difference = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), *params)))
  print(f'max |params(1 process) - params(2 processes)| = {max_difference:.3g}')
  chex.assert_trees_all_close(params[0], params[1], atol=1e-5, rtol=1e-4)


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_relaunch_resumes(
    tmp_path, two_process_run):
  workdir = str(tmp_path / 'preempted')
  launched = _launch(workdir)
  while launched.poll() is None and not os.path.isdir(os.path.join(workdir, 'checkpoints', '1')):
    time.sleep(0.01)
  with open(f'/proc/{launched.pid}/task/{launched.pid}/children') as f:
    processes = [int(pid) for pid in f.read().split()]
  assert len(processes) == 2, processes
  os.kill(processes[1], signal.SIGTERM)
  _, stderr = launched.communicate(timeout=600)
  assert launched.returncode == preemption.EXIT_CODE, stderr[-3000:]
  stops = re.findall(r'Stopped by .* at step (\d+) of \d+, the step all 2 processes agreed on',
                     stderr)
  assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]  # each process logs it
  step = int(stops[0])
  assert 1 < step < _STEPS and max(_steps(workdir)) == step

  relaunched = _launch(workdir)
  _, stderr = relaunched.communicate(timeout=600)
  assert relaunched.returncode == 0, stderr[-3000:]
  assert f'Resumed from step {step} of {_STEPS}' in stderr
  chex.assert_trees_all_equal(_params(workdir), _params(two_process_run[0]))


def _steps(workdir: str) -> list[int]:
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints'))
                if name.isdigit())
