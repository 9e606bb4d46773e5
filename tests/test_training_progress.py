"""The time-left estimate on a synthetic clock, and the progress display off a terminal."""

import logging

import numpy as np
import pytest

from latentadv import training_progress as tp

EPOCHS, STEPS_PER_EPOCH, SYNC_EVERY = 10, 78, 10
TOTAL = EPOCHS * STEPS_PER_EPOCH
COMPILE_STEP, COMPILE_EVAL = 20.0, 15.0  # seconds of compiling the step / an evaluator
EVAL_RATE = 1e-4  # seconds per unit of evaluation work
PERIODIC_WORK = tp.attack_work(1000, 10)  # 500 test + 500 monitored examples, PGD-10
FINAL_WORK = tp.attack_work(1000, 50, 2)


class Clock:
  """A clock that moves only when told."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def _simulate(first_step: int = 0):
  """A run as the trainer drives it: the host dispatches steps ahead of the device (no time
  passes), waits for them at every fetch of metrics, evaluates after every epoch and at the end.

  Returns [(time, estimate, complete)] after every call, and the time the run ended.
  """
  clock = Clock()
  plan = [tp.Evaluation(tp.PERIODIC, epoch * STEPS_PER_EPOCH, PERIODIC_WORK)
          for epoch in range(1, EPOCHS + 1)] + [tp.Evaluation(tp.FINAL, TOTAL, FINAL_WORK)]
  time_left = tp.TimeLeft(TOTAL, first_step, plan, clock)
  step_seconds = np.random.default_rng(0).uniform(0.4, 0.6, TOTAL)  # mean 0.5 s
  estimates, unfinished = [], 0.0
  compiled = False

  def note():
    estimates.append((clock.now, time_left.seconds_left(), time_left.complete))

  for step in range(first_step, TOTAL):
    done = step + 1
    if step == first_step:
      clock.now += COMPILE_STEP
    unfinished += step_seconds[step]
    time_left.step(done)
    note()
    if done % SYNC_EVERY == 0 or done % STEPS_PER_EPOCH == 0:
      clock.now += unfinished
      unfinished = 0.0
      time_left.synced(done)
      note()
    if done % STEPS_PER_EPOCH == 0:
      time_left.begin_evaluation(tp.Evaluation(tp.PERIODIC, done, PERIODIC_WORK))
      note()
      clock.now += PERIODIC_WORK * EVAL_RATE + (0.0 if compiled else COMPILE_EVAL)
      compiled = True
      time_left.end_evaluation()
      note()
  time_left.begin_evaluation(tp.Evaluation(tp.FINAL, TOTAL, FINAL_WORK))
  note()
  clock.now += FINAL_WORK * EVAL_RATE + COMPILE_EVAL
  time_left.end_evaluation()
  note()
  return estimates, clock.now


def test_the_estimate_stays_within_a_band_of_the_truth_and_ends_at_zero():
  estimates, end = _simulate()
  second_evaluation = 2 * STEPS_PER_EPOCH * 0.5 + COMPILE_STEP + 2 * PERIODIC_WORK * EVAL_RATE
  checked = 0
  for now, estimate, complete in estimates:
    truth = end - now
    if estimate is None:  # before the first synchronised step after the compiled one
      assert now <= COMPILE_STEP + SYNC_EVERY * 0.6
      continue
    if not complete:  # before the first evaluation: a lower bound, as it says
      assert estimate <= truth * 1.1
    elif now > second_evaluation + COMPILE_EVAL:  # compile time and work rate both measured
      assert abs(estimate - truth) <= 0.1 * truth + 1.0, (now, estimate, truth)
      checked += 1
  assert checked > 8 * STEPS_PER_EPOCH
  assert estimates[-1] == (end, 0.0, True)


def test_a_resumed_run_estimates_only_what_is_left():
  estimates, end = _simulate(first_step=5 * STEPS_PER_EPOCH + 7)
  now, estimate, complete = estimates[-3]  # the final evaluation begins
  assert complete and estimate == pytest.approx(end - now, rel=0.1)


def test_a_run_that_stops_early_drops_the_evaluations_it_skips():
  clock = Clock()
  plan = [tp.Evaluation(tp.PERIODIC, 10, 100.0), tp.Evaluation(tp.PERIODIC, 20, 100.0),
          tp.Evaluation(tp.FINAL, 20, 400.0)]
  time_left = tp.TimeLeft(20, 0, plan, clock)
  for done in range(1, 11):
    clock.now += 1.0
    time_left.step(done)
  time_left.synced(10)
  time_left.begin_evaluation(plan[0])
  clock.now += 5.0
  time_left.end_evaluation()
  # Steps 11-20 at 1 s/step (the first step's second is compiling), evaluation 2 at 5 s, the
  # final one at 4 x 5 s.
  assert time_left.seconds_left() == pytest.approx(10 + 5 + 20)
  time_left.begin_evaluation(tp.Evaluation(tp.FINAL, 10, 400.0))  # stopped at step 10
  assert time_left.seconds_left() == pytest.approx(20)
  clock.now += 8.0
  assert time_left.seconds_left() == pytest.approx(12)
  clock.now += 30.0  # slower than predicted: the estimate stays at 0, never negative
  assert time_left.seconds_left() == 0.0 and not time_left.finished
  time_left.end_evaluation()
  assert time_left.finished and time_left.describe() == '0 s left'


def test_off_a_terminal_a_line_every_five_percent_of_synchronised_steps(caplog):
  clock = Clock()
  display = tp.Display(200, 0, [tp.Evaluation(tp.FINAL, 200, 10.0)], terminal=False,
                       clock=clock)
  with caplog.at_level(logging.INFO, logger='absl'):
    for done in range(1, 201):
      clock.now += 0.5
      display.step(done)
      if done % 4 == 0:
        display.synced(done)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert len(lines) == 20
  assert lines[0].startswith('step 12/200 (6 %): 6 s elapsed, 2.00 steps/s, at least')
  assert lines[-1].startswith('step 200/200 (100 %)')


@pytest.mark.parametrize('seconds, text', [(0.4, '0 s'), (42.2, '42 s'), (314, '5 min 14 s'),
                                           (7500, '2 h 05 min')])
def test_durations_read_as_a_person_says_them(seconds, text):
  assert tp.format_duration(seconds) == text
