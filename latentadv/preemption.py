"""Stopping a training run cleanly on SIGTERM or SIGINT, at a step every process agrees on.

Schedulers announce a preemption (a spot or preemptible machine taken back, a SLURM job at its
time limit or preempted, a TPU VM's maintenance) with SIGTERM, and take the machine a little
later. Once `install()` has run (latentadv.main runs it; `handle_signals()` for a block):

- during training, SIGTERM or SIGINT lets the step in flight finish; the trainer then saves a
  checkpoint of that step with its progress record, writes its pending metrics and raises
  `Preempted`, and latentadv.main exits with `EXIT_CODE` (75). Running the same command again
  resumes from that step and ends as a run never interrupted would.
- in a run of several processes, every process stops at the same step: JAX's distributed
  runtime runs a preemption service whose SIGTERM handler tells every process, and
  `jax.experimental.multihost_utils.reached_preemption_sync_point` is True at one step for all
  of them (the largest step any process has reached, plus one). SIGINT is passed on to that
  handler as a SIGTERM.
- after training (the final evaluation, results.json), a signal raises `Preempted` at once:
  the training is complete and checkpointed, and the rerun evaluates again.
- a second signal while stopping is logged and changes nothing; SIGKILL abandons a save in
  flight, and the next run removes its temporary directory and resumes from the step before.
- once results.json is written, and once the exit status 75 is decided, signals are ignored
  (`ignore_further_signals()`).

Test hook: with the environment variable LATENTADV_PAUSE_AT=<point>, the process waits at the
named point (up to an hour, or until a stop signal) so that a test can signal or kill it
there. The points are 'write:<name>' between writing a JSON file (config.json, results.json,
...; checkpoint.write_json_atomically) to a temporary file and renaming it. docs/preemption.md
describes all of this.
"""

import contextlib
import os
import signal
import sys
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# EX_TEMPFAIL of sysexits.h: a temporary failure, to be retried; schedulers requeue on it.
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
PAUSE_VARIABLE = 'LATENTADV_PAUSE_AT'
INSTALLED = 'Stop signals handled'  # logged by install()
_PAUSE_SECONDS = 3600.0


class Preempted(Exception):
  """A stop signal ended the run; the message says where and how to resume."""


class _Handler:
  """What the installed signal handlers have seen, and what they do (see the module docstring)."""

  def __init__(self):
    self.installed = False
    self.received = None  # the first stop signal's name (this process only)
    self.evaluating = False
    self.previous = {}

  def on_signal(self, number, frame):
    del frame
    name = signal.Signals(number).name
    if self.received is not None:
      logging.warning('%s received while stopping after %s: ignored; the checkpoint being '
                      'saved completes (SIGKILL would abandon it and keep the previous one).',
                      name, self.received)
      return
    self.received = name
    if self.evaluating:
      raise Preempted(_after_training_message(name))
    logging.warning('%s received: stopping after the step in flight and saving it.', name)


_handler = _Handler()


def _agreed_by_runtime() -> bool:
  """True in a multi-process run with JAX's preemption service, which then owns SIGTERM."""
  return (jax.process_count() > 1 and jax.distributed.is_initialized()
          and jax.config.jax_enable_preemption_service)


def _pass_on_as_sigterm(number, frame):
  """SIGINT in a multi-process run: raised again as SIGTERM for JAX's preemption service."""
  del number, frame
  signal.raise_signal(signal.SIGTERM)


def install():
  """From now on SIGTERM and SIGINT stop training at an agreed step (see the module docstring).

  Call from the main thread, after parallel.initialize (which starts JAX's preemption service
  in a multi-process run). latentadv.main installs them for the life of its process.
  """
  if _agreed_by_runtime():
    handlers = {signal.SIGINT: _pass_on_as_sigterm}
  elif jax.process_count() > 1:
    logging.warning('JAX\'s preemption service is off (jax_enable_preemption_service): '
                    'SIGTERM and SIGINT end this multi-process run where it stands.')
    handlers = {}
  else:
    handlers = {number: _handler.on_signal for number in SIGNALS}
  _handler.previous = {number: signal.signal(number, handler)
                       for number, handler in handlers.items()}
  _handler.installed, _handler.received, _handler.evaluating = True, None, False
  logging.info('%s: %s.', INSTALLED, 'SIGTERM and SIGINT save the step reached and exit with '
               f'status {EXIT_CODE}' if handlers else 'SIGTERM and SIGINT keep their actions')


@contextlib.contextmanager
def handle_signals():
  """install() within it; the previous handlers are restored on exit."""
  install()
  try:
    yield
  finally:
    for number, handler in _handler.previous.items():
      signal.signal(number, handler)
    _handler.installed, _handler.previous = False, {}


def ignore_further_signals():
  """From now on SIGTERM and SIGINT are ignored, to the end of the process: call it once
  results.json is written, or just before exiting with EXIT_CODE, so that a late signal
  (even during the interpreter's shutdown, which would restore their default action to a
  Python handler) cannot replace the exit status."""
  for number in SIGNALS:
    previous = signal.signal(number, signal.SIG_IGN)
    _handler.previous.setdefault(number, previous)


def stop_at(step: int) -> bool:
  """True if training stops after `step` (the number of steps done) because of a stop signal.

  Call once after every training step, in every process: with several processes it is True
  at the same step in all of them. Always False before `install()`.
  """
  if not _handler.installed:
    return False
  if _agreed_by_runtime():
    return multihost_utils.reached_preemption_sync_point(step)
  return _handler.received is not None


def training_stopped(step: int, total_steps: int, checkpoint_dir: str) -> Preempted:
  """The exception to raise once the checkpoint of `step` is saved after stop_at(step)."""
  cause = _handler.received or 'a stop signal'
  agreed = (f', the step all {jax.process_count()} processes agreed on'
            if jax.process_count() > 1 else '')
  return Preempted(f'Stopped by {cause} at step {step} of {total_steps}{agreed}; its '
                   f'checkpoint is in {checkpoint_dir}. To resume, run the same command again '
                   f'(exit status {EXIT_CODE}).')


def after_training():
  """From now on a stop signal raises Preempted at once (the training is saved); raises it
  now if one came after the last step's check. In a multi-process run this replaces the
  preemption service's SIGTERM handler."""
  if not _handler.installed:
    return
  if _handler.received is not None:
    raise Preempted(_after_training_message(_handler.received))
  _handler.evaluating = True
  for number in SIGNALS:
    previous = signal.signal(number, _handler.on_signal)
    _handler.previous.setdefault(number, previous)


def _after_training_message(name: str) -> str:
  return (f'Stopped by {name} after training, before results.json was complete; the '
          f'training is saved. To evaluate, run the same command again (exit status '
          f'{EXIT_CODE}).')


def pause_point(name: str):
  """The test hook: waits here if LATENTADV_PAUSE_AT names `name` until a stop signal arrives or an hour has passed, after printing 'paused at <name>' to
  stderr. Single-process runs only (with several, JAX's preemption service takes SIGTERM)."""
  if os.environ.get(PAUSE_VARIABLE) != name:
    return
  print(f'paused at {name}', file=sys.stderr, flush=True)
  deadline = time.monotonic() + _PAUSE_SECONDS
  while _handler.received is None and time.monotonic() < deadline:
    time.sleep(0.01)
