"""Faults: SIGTERM/SIGINT stops, a full disk during a save, damaged inputs (docs/preemption.md)."""

import errno
import os
import signal
import subprocess
import time

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from benchmarks import faults
from latentadv import base_config
from latentadv import checkpoint
from latentadv import preemption
from latentadv.data import datasets
from latentadv.data import sources

from conftest import DATA_ROOT, REPO_ROOT

# The campaign's run (32 steps, a checkpoint every 8) without its periodic and monitor attacks.
_QUICK = ('--config.train.eval_every_epochs=0', '--config.train.collapse_monitor_examples=0',
          '--config.eval.n_examples=64', '--config.eval.pgd.steps=2',
          '--config.eval.pgd.restarts=1')


def test_sigterm_mid_run_saves_the_step_reached_and_the_rerun_ends_bitwise_equal(tmp_path):
  reference, stopped = str(tmp_path / 'reference'), str(tmp_path / 'stopped')
  uninterrupted = subprocess.Popen(faults.main_command(reference, DATA_ROOT, *_QUICK),
                                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
  victim = subprocess.Popen(faults.main_command(stopped, DATA_ROOT, *_QUICK), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  # Once the first checkpoint (step 1) is on disk; a second signal while it stops.
  while victim.poll() is None and not os.path.isdir(os.path.join(stopped, 'checkpoints', '1')):
    time.sleep(0.005)
  victim.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  victim.send_signal(signal.SIGINT)
  _, stderr = victim.communicate(timeout=600)
  assert victim.returncode == preemption.EXIT_CODE, stderr[-3000:]
  last_line = stderr.strip().splitlines()[-1]
  assert 'Stopped by SIGTERM at step ' in last_line and 'run the same command again' in last_line
  step = int(last_line.split('at step ')[1].split()[0])
  saved = sorted(int(n) for n in os.listdir(os.path.join(stopped, 'checkpoints')) if n.isdigit())
  assert 1 < step < faults.TOTAL_STEPS and saved[-1] == step, (step, saved)
  assert not os.path.exists(os.path.join(stopped, 'results.json'))

  resumed = subprocess.run(faults.main_command(stopped, DATA_ROOT, *_QUICK), cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {step} of {faults.TOTAL_STEPS}' in resumed.stderr
  _, stderr = uninterrupted.communicate(timeout=600)
  assert uninterrupted.returncode == 0, stderr[-3000:]
  assert faults.bitwise_equal(reference, stopped)


def test_signals_stop_training_at_the_next_step_interrupt_what_follows_and_not_a_complete_run():
  with preemption.handle_signals():
    assert not preemption.stop_at(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.stop_at(2)
    os.kill(os.getpid(), signal.SIGINT)  # a second signal changes nothing
    assert preemption.stop_at(3)
    assert 'Stopped by SIGTERM at step 3 of 8' in str(preemption.training_stopped(3, 8, 'dir'))
    with pytest.raises(preemption.Preempted, match='Stopped by SIGTERM after training'):
      preemption.after_training()  # the signal came after the last step's check
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  with preemption.handle_signals():
    preemption.after_training()
    with pytest.raises(preemption.Preempted, match='To evaluate, run the same command again'):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)
  with preemption.handle_signals():
    preemption.after_training()
    preemption.ignore_further_signals()
    os.kill(os.getpid(), signal.SIGTERM)  # results.json is written: ignored
    time.sleep(0.1)
  assert not preemption.stop_at(4)  # outside handle_signals


def test_a_full_disk_during_a_save_ends_with_one_line_and_keeps_the_step_before(
    tmp_path, monkeypatch):
  workdir, state = str(tmp_path), {'w': jnp.arange(3.0)}
  checkpoints = checkpoint.Checkpoints(workdir, every_steps=1, keep=3,
                                       remove_interrupted_saves=True)
  checkpoints.save(1, state, {'history': []})
  checkpoints.wait_until_finished()

  async def disk_full(self, x, directory):
    del self, x
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', disk_full)
  with pytest.raises(checkpoint.DiskFullError) as error:
    checkpoints.save(2, {'w': state['w'] + 1}, {'history': []})
    checkpoints.close()
  message = str(error.value)
  assert '\n' not in message and '(the newest there: step 1)' in message
  assert 'Fix: free disk space' in message
  monkeypatch.undo()

  # What a resumed run finds (it also deletes the unfinished step's temporary folder; the
  # campaign, benchmarks/faults.py, resumes a run on a real full disk).
  resumed = checkpoint.Checkpoints(workdir, every_steps=1, keep=3)
  assert resumed.all_steps() == [1]
  restored, _ = resumed.restore(checkpoint.abstract_like(state))
  assert (restored['w'] == state['w']).all()


def _one_line_data_error(data_config, split: str) -> str:
  with pytest.raises(datasets.DataError) as error:
    source = sources.open_source(data_config, split)
    source.read(0, len(source))
  assert '\n' not in str(error.value)
  return str(error.value)


def test_a_truncated_cifar_batch_file_is_named_with_the_fix(tmp_path):
  config = base_config.get_config('smoke')
  config.data.source, config.data.dir = 'local', faults.damaged_cifar(str(tmp_path), DATA_ROOT)
  message = _one_line_data_error(config.data, 'train')
  assert 'data_batch_1.bin has 1000000 bytes' in message and 'Fix: point config.data.dir' in message


def test_a_label_out_of_range_is_named_with_the_fix(tmp_path):
  config = base_config.mnist(base_config.get_config('smoke'))
  config.data.source = 'local'
  config.data.dir = faults.mnist_with_a_bad_label(str(tmp_path), DATA_ROOT)
  message = _one_line_data_error(config.data, 'train')
  assert 'train-labels-idx1-ubyte.gz has labels >= 10' in message and 'Fix:' in message


def test_a_checkpoint_with_a_nan_is_named_with_the_fix_and_left_as_it_is(tmp_path):
  workdir = str(tmp_path)
  state = {'params': {'conv1': {'kernel': jnp.ones((3, 3))}}, 'step': jnp.int32(4)}
  checkpoints = checkpoint.Checkpoints(workdir, every_steps=1, keep=2)
  checkpoints.save(4, state, {'history': []})
  checkpoints.close()
  faults.put_nan_in_checkpoint(workdir, 4)
  before = faults.digest(workdir)
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.Checkpoints(workdir, every_steps=1, keep=2).restore(
        checkpoint.abstract_like(state), delete_damaged=True)
  message = str(error.value)
  assert '\n' not in message and 'step 4' in message and 'params/conv1/kernel' in message
  assert f'Fix: delete {os.path.join(workdir, "checkpoints", "4")}' in message
  assert faults.digest(workdir) == before


def test_a_workdir_written_by_another_config_is_refused_before_anything_is_written(tmp_path):
  config = base_config.mnist(base_config.get_config('smoke'))
  checkpoint.write_json_atomically(str(tmp_path / 'config.json'), config.to_dict())
  config.data.dir = '/elsewhere/mnist'  # the same data elsewhere: the same run
  checkpoint.check_config(str(tmp_path), config.to_dict())
  config.method.eps, config.optim.epochs = 0.2, 7
  with pytest.raises(checkpoint.CheckpointMismatchError) as error:
    checkpoint.check_config(str(tmp_path), config.to_dict())
  message = str(error.value)
  assert '\n' not in message and str(tmp_path / 'config.json') in message
  assert 'method.eps is 0.3 there and 0.2 here (and 1 more keys)' in message
  assert 'Fix: run with the config written there' in message
