"""How long a training run has left, and a display of its progress.

`TimeLeft` estimates the seconds until the run ends as the sum of
  - the training steps left at the run's average step time: the training seconds (evaluations
    excluded) from the end of the first step this process ran (which includes compiling the
    step) to the latest synchronised step, over the steps between them. A synchronised step is
    one whose metrics the trainer fetched: the host dispatches steps ahead of the device, and
    only there has the device caught up;
  - the periodic evaluations left, at the seconds per unit of work (`attack_work`: examples x
    model passes) of the latest periodic evaluation measured;
  - the final evaluation, at that rate plus the compile time of its own program, taken to be
    the first periodic evaluation's excess over the rate (it compiled the periodic program).
Until a periodic evaluation has been measured the evaluations are left out and the estimate is
a lower bound (`TimeLeft.complete` is False). It is zero once the final evaluation has ended.

`Display` shows it: a tqdm progress bar when stderr is a terminal, else a log line each time a
synchronised step passes another 5 % of the run.
"""

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence

import tqdm
from absl import logging

PERIODIC, FINAL = 'periodic', 'final'


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """An evaluation that runs after training step `step`: `kind` PERIODIC (after an epoch) or
  FINAL (after training); `work` in units proportional to its run time (`attack_work`)."""
  kind: str
  step: int
  work: float


def attack_work(n_examples: int, steps: int, restarts: int = 1) -> float:
  """Units of evaluation work: a clean pass and `restarts` attacks of `steps` steps on
  `n_examples` examples, in model passes per example."""
  return float(n_examples * (1 + steps * restarts))


def format_duration(seconds: float) -> str:
  """'42 s', '5 min 14 s' or '2 h 05 min' (rounded to whole seconds or minutes)."""
  seconds = round(max(seconds, 0.0))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60} s'
  minutes = round(seconds / 60)
  return f'{minutes // 60} h {minutes % 60:02d} min'


class TimeLeft:
  """The estimate of the module docstring, for one process's part of a run.

  Call `step` after each training step is dispatched, `synced` after its metrics are fetched,
  `begin_evaluation` / `end_evaluation` around each evaluation; `clock` (seconds, monotonic) is
  injectable for tests.
  """

  def __init__(self, total_steps: int, first_step: int, evaluations: Sequence[Evaluation],
               clock: Callable[[], float] = time.perf_counter):
    """total_steps: the run's last step; first_step: the step this process starts from (a
    resumed run's checkpoint); evaluations: those planned after first_step."""
    self._clock = clock
    self._total = total_steps
    self._planned = sorted((e for e in evaluations if e.step > first_step),
                           key=lambda e: (e.step, e.kind == FINAL))
    self._origin = None  # (step, time) at the end of the first step
    self._synced_step = None  # the latest synchronised step
    self._train_seconds = 0.0  # origin to latest synchronised step, evaluations excluded
    self._mark = None  # when training time last started to count: a sync or an evaluation's end
    self._current = None  # (Evaluation, start time) of the evaluation running now
    self._measured = []  # (work, seconds) of each periodic evaluation
    self._training_over = False
    self._finished = False

  def step(self, done: int):
    """Training has dispatched step `done` (the first one this process ran: compiled)."""
    if self._origin is None:
      now = self._clock()
      self._origin, self._synced_step, self._mark = (done, now), done, now

  def synced(self, done: int):
    """The metrics of step `done` were fetched: the device has finished it."""
    now = self._clock()
    self._train_seconds += now - self._mark
    self._synced_step, self._mark = done, now

  def begin_evaluation(self, evaluation: Evaluation):
    """`evaluation` starts now. A FINAL one ends training: the periodic evaluations still
    planned are dropped (a run stopped early skips them)."""
    if evaluation.kind == FINAL:
      self._planned, self._training_over = [], True
    else:
      self._planned = [e for e in self._planned if e.step > evaluation.step or e.kind == FINAL]
    self._current = (evaluation, self._clock())

  def end_evaluation(self):
    """The evaluation begun last has ended."""
    evaluation, start = self._current
    now = self._clock()
    if evaluation.kind == PERIODIC and evaluation.work > 0:
      self._measured.append((evaluation.work, now - start))
    self._finished = evaluation.kind == FINAL
    self._current, self._mark = None, now

  @property
  def steps_per_second(self) -> float | None:
    """Training steps per second over the run so far (None before two synchronised steps)."""
    if self._origin is None or self._synced_step <= self._origin[0] or self._train_seconds <= 0:
      return None
    return (self._synced_step - self._origin[0]) / self._train_seconds

  @property
  def complete(self) -> bool:
    """False while an evaluation still to run cannot be predicted (none measured yet)."""
    return self._finished or bool(self._measured) or not (self._planned or self._current)

  def _predict(self, evaluation: Evaluation) -> float:
    """Predicted seconds of `evaluation` (0 before a periodic one has been measured)."""
    if not self._measured:
      return 0.0
    work, seconds = self._measured[-1]
    rate = seconds / work
    first_work, first_seconds = self._measured[0]
    compile_seconds = max(first_seconds - first_work * rate, 0.0)
    return evaluation.work * rate + (compile_seconds if evaluation.kind == FINAL else 0.0)

  def seconds_left(self) -> float | None:
    """Estimated seconds until the run ends; None before the step time is known."""
    if self._finished:
      return 0.0
    now = self._clock()
    training = 0.0
    if not self._training_over:
      if self.steps_per_second is None:
        return None
      training = (self._total - self._synced_step) / self.steps_per_second
      if self._current is None:
        training = max(training - (now - self._mark), 0.0)
    evaluations = sum(self._predict(e) for e in self._planned)
    if self._current is not None:
      evaluation, start = self._current
      evaluations += max(self._predict(evaluation) - (now - start), 0.0)
    return training + evaluations

  def describe(self) -> str:
    """'about 5 min 14 s left', 'at least ...' while evaluations are unpredicted, or ''."""
    seconds = self.seconds_left()
    if seconds is None:
      return ''
    if self._finished:
      return '0 s left'
    return f'{"about" if self.complete else "at least"} {format_duration(seconds)} left'

  @property
  def finished(self) -> bool:
    """True once the final evaluation has ended."""
    return self._finished


class _AboveTheBar:
  """A text stream that writes through tqdm.write: the bar is cleared, the text written, the
  bar drawn again below it."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    tqdm.tqdm.write(text, file=self._stream, end='')
    return len(text)

  def flush(self):
    self._stream.flush()


class Display:
  """A run's progress where its log goes: on a terminal (stderr), a tqdm bar of the training
  steps with the speed and `TimeLeft`'s estimate, and absl's log lines written above it;
  otherwise a log line each time a synchronised step passes another `every_percent` % of the
  steps. With `enabled` False (processes other than 0) it shows nothing but still estimates.
  """

  def __init__(self, total_steps: int, first_step: int, evaluations: Sequence[Evaluation],
               enabled: bool = True, terminal: bool | None = None, every_percent: int = 5,
               clock: Callable[[], float] = time.perf_counter):
    self.time_left = TimeLeft(total_steps, first_step, evaluations, clock)
    self._total, self._every = total_steps, every_percent
    self._clock, self._start = clock, clock()
    self._next_percent = (100 * first_step // total_steps // every_percent + 1) * every_percent
    self._enabled = enabled
    self._bar = self._absl_stream = None
    if enabled and (sys.stderr.isatty() if terminal is None else terminal):
      self._bar = tqdm.tqdm(total=total_steps, initial=first_step, desc='training',
                            file=sys.stderr, dynamic_ncols=True, bar_format=(
                                '{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps '
                                '[{elapsed}{postfix}]'))
      handler = logging.get_absl_handler().python_handler
      if handler.stream is sys.stderr:
        self._absl_stream = handler.setStream(_AboveTheBar(sys.stderr))

  @property
  def elapsed(self) -> float:
    """Seconds since the display was made."""
    return self._clock() - self._start

  def _status(self) -> str:
    """'2.31 steps/s, about 5 min 14 s left' (the parts known so far)."""
    rate = self.time_left.steps_per_second
    return ', '.join(part for part in (rate and f'{rate:.2f} steps/s', self.time_left.describe())
                     if part)

  def step(self, done: int):
    """Training has dispatched step `done`."""
    self.time_left.step(done)
    if self._bar is not None:
      self._bar.set_postfix_str(self._status(), refresh=False)
      self._bar.update(done - self._bar.n)

  def synced(self, done: int):
    """The metrics of step `done` were fetched; off a terminal, logs a line if `done` passed
    another `every_percent` % of the steps."""
    self.time_left.synced(done)
    if self._bar is None and self._enabled and 100 * done >= self._next_percent * self._total:
      self._next_percent = (100 * done // self._total // self._every + 1) * self._every
      logging.info('step %d/%d (%d %%): %s elapsed, %s', done, self._total,
                   100 * done // self._total, format_duration(self.elapsed), self._status())

  def begin_evaluation(self, evaluation: Evaluation, label: str):
    """`evaluation` starts now; `label` names it ('final evaluation: PGD-50-10 on ...'). The
    final evaluation's label and estimate are logged; a periodic one shows only on the bar."""
    self.time_left.begin_evaluation(evaluation)
    if self._bar is not None:
      self._bar.set_description_str(label, refresh=False)
      self._bar.set_postfix_str(self.time_left.describe(), refresh=True)
    elif self._enabled and evaluation.kind == FINAL:
      logging.info('%s (%s)', label, self.time_left.describe() or 'not yet estimated')

  def end_evaluation(self):
    """The evaluation begun last has ended."""
    self.time_left.end_evaluation()
    if self._bar is not None:
      self._bar.set_description_str('done' if self.time_left.finished else 'training',
                                    refresh=False)
      self._bar.set_postfix_str(self._status(), refresh=True)

  def close(self):
    """Ends the bar and gives absl's log stream back."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._absl_stream is not None:
      logging.get_absl_handler().python_handler.setStream(self._absl_stream)
      self._absl_stream = None
