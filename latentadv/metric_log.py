"""Training metrics to TensorBoard event files, without TensorFlow.

An event file is a sequence of records, each a serialised `Event` protocol buffer framed with
its length and CRC-32C checksums. This writer frames them with the `tensorboard` package's
`RecordWriter` and writes them to a plain Python file. tensorboard's own `EventFileWriter` opens
files through `tensorboard.compat.tf`, which imports TensorFlow whenever it is installed;
`tensorboard` itself is needed anyway to view the files, so no further package enters the
dependencies. Only the tfds source may import TensorFlow.
"""

import itertools
import os
import socket
import time

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import record_writer

_FILE_NUMBERS = itertools.count()  # two writers of one process in one second get two files


class MetricWriter:
  """Scalars to `<workdir>/events.out.tfevents.<time>.<host>.<pid>.<n>`.

  With `enabled` False (processes other than 0 of a multi-process run) it writes nothing.
  The scalars also go to the log at debug level (absl verbosity 1: `-v 1`).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._file = self._records = None
    if not enabled:
      return
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_FILE_NUMBERS)}')
    self._file = open(os.path.join(workdir, name), 'wb')  # pylint: disable=consider-using-with
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event):
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: dict[str, float]):
    """Writes each {tag: value} as a TensorBoard scalar at `step`."""
    if self._file is None:
      return
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values)))
    logging.debug('[%d] %s', step, ', '.join(f'{tag}={float(value):.6g}'
                                             for tag, value in scalars.items()))

  def flush(self):
    """Writes buffered events to disk."""
    if self._file is not None:
      self._file.flush()

  def close(self):
    """Flushes and closes the event file."""
    if self._file is not None:
      self._file.close()
      self._file = None
