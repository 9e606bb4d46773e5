"""Training metrics to TensorBoard event files and to the log, without TensorFlow.

The event files are written with the `tensorboard` package's own writer
(`tensorboard.summary.writer.event_file_writer`, the one `torch.utils.tensorboard` uses): plain
protocol buffers, no TensorFlow, and `tensorboard` is needed anyway to view the files, so no
further package (tensorboardX would be one) enters the dependencies. JAX images for GPUs and TPU
VMs often come without TensorFlow; clu's writers import it.
"""

import time

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer


class MetricWriter:
  """Scalars to `<workdir>/events.out.tfevents.*` and to the log.

  With `enabled` False (processes other than 0 of a multi-process run) it writes nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = event_file_writer.EventFileWriter(workdir) if enabled else None

  def write_scalars(self, step: int, scalars: dict[str, float]):
    """Writes each {tag: value} as a TensorBoard scalar at `step` and logs them on one line."""
    if self._writer is None:
      return
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()]
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))
    logging.info('[%d] %s', step, ', '.join(f'{tag}={float(value):.6g}'
                                            for tag, value in scalars.items()))

  def flush(self):
    """Writes buffered events to disk."""
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    """Flushes and closes the event file."""
    if self._writer is not None:
      self._writer.close()


class ProgressReport:
  """Every `every_steps` steps: training speed and the estimated time left, logged and written.

  Call it after each step with the number of steps done. The speed is measured over the steps
  since the previous report (the first report of a run or a resume includes compilation).
  """

  def __init__(self, total_steps: int, every_steps: int, writer: MetricWriter):
    self._total, self._every, self._writer = total_steps, every_steps, writer
    self._last_step, self._last_time = None, None

  def __call__(self, done: int):
    now = time.perf_counter()
    if self._last_step is None:
      self._last_step, self._last_time = done - 1, now
      return
    if done % self._every and done != self._total:
      return
    steps_per_second = (done - self._last_step) / max(now - self._last_time, 1e-9)
    left = (self._total - done) / steps_per_second
    logging.info('Step %d/%d (%.1f %%): %.2f steps/s, %.0f min left.', done, self._total,
                 100 * done / self._total, steps_per_second, left / 60)
    self._writer.write_scalars(done, {'steps_per_sec': steps_per_second})
    self._last_step, self._last_time = done, now
