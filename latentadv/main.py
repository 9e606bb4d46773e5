"""Command-line trainer.

  python -m latentadv.main --config=configs/cifar_slat.py[:preset] --workdir=DIR \
      [--config.data.source=local --config.data.dir=../shared/data/cifar10 ...]

Re-running the same command resumes from the latest checkpoint in DIR. Multi-process runs add
--coordinator_address, --num_processes and --process_id (see parallel.initialize and launch/).
SIGTERM or SIGINT (a preemption) saves the step reached, in every process, and ends the run
with exit status 75 (preemption.EXIT_CODE): run the same command again to resume
(docs/preemption.md).
Bad input (an unknown or invalid config key, unreadable data, checkpoints that do not match the
config) ends the run with a one-line message naming the problem and the fix, and exit code 1.
"""

import errno
import logging as python_logging
import os
import re
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import checkpoint
from latentadv import compilation
from latentadv import parallel
from latentadv import preemption
from latentadv import train
from latentadv import validation
from latentadv.data import datasets

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py), optionally '
                                'followed by :preset.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 in a multi-process '
                    'run (default: detected by JAX on Cloud TPU, SLURM and Open MPI).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes).')
flags.mark_flags_as_required(['config', 'workdir'])


# Modules whose INFO lines are detail in a training log: orbax's per-save lines, the evaluator's
# per-attack lines (the trainer logs each evaluation's result).
_DETAIL_PATHS = (f'{os.sep}orbax{os.sep}', f'{os.sep}latentadv{os.sep}evaluate')


def _quiet_libraries(record) -> bool:
  """Drops the INFO lines of _DETAIL_PATHS unless absl's verbosity is debug (-v 1); their
  warnings and errors always show."""
  return (record.levelno >= logging.converter.STANDARD_WARNING or logging.level_debug()
          or not any(path in record.pathname for path in _DETAIL_PATHS))


def _eps_text(eps: float) -> str:
  """'8/255' for a multiple of 1/255, else eps as it is ('0.3')."""
  steps = eps * 255
  return f'{round(steps)}/255' if round(steps) and abs(steps - round(steps)) < 1e-6 else f'{eps:g}'


def _run_line(config, workdir: str, recipe: str) -> str:
  """One line naming the run: method, dataset, model, eps, preset, seeds, devices, workdir."""
  preset = recipe.partition(':')[2]
  seeds = (f'seed {config.seed}' if config.num_seeds == 1
           else f'seeds {config.seed}-{config.seed + config.num_seeds - 1}')
  devices = jax.device_count()
  processes = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
  return (f'{config.method.name} on {config.data.name} ({config.model.name}, eps '
          f'{_eps_text(config.method.eps)}{", preset " + preset if preset else ""}), {seeds}, '
          f'{devices} {jax.default_backend().upper()} device{"s" * (devices > 1)}{processes}, '
          f'workdir {workdir}; every setting is in its config.json')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a key the config lacks, set by an override or by the config file,
  exits with one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:  # how the locked ConfigDict rejects a key
    named = re.search(r'Key "(\w+)"', str(error))
    key = named.group(1) if named else (re.findall(r'\w+', str(error)) or [''])[0]
    overrides = [arg.split('=')[0] for arg in argv if arg.startswith('--config.')]
    flag = next((name for name in overrides if key in name.split('.')), None)
    config_file = next((arg.split('=', 1)[1].split(':')[0] for arg in argv
                        if arg.startswith('--config=')), None)
    if flag is None and not (named and config_file):
      raise
    suggestion = re.search(r'Did you mean "(\w+)"', str(error))
    hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
    where = f'{flag} names no config key' if flag else f'{config_file} sets a key the config lacks'
    sys.exit(f'ConfigError: {where}: there is no {key!r}{hint}. Fix: '
             'spell it as in latentadv/base_config.py, which lists every key.')


def _hide_accelerators_from_tensorflow():
  """Keeps TensorFlow, which tfds uses, off the GPUs that JAX trains on; a no-op without it.

  Only the tfds source imports TensorFlow (latentadv.data.sources.import_tfds); without
  TensorFlow the trainer runs unchanged on local files and tfds explains what to install where it
  needs it.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not logging.level_debug():  # e.g. "Unable to initialize backend 'tpu'" where there is none
    python_logging.getLogger('jax').setLevel(python_logging.WARNING)
  compilation.enable_cache()
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  preemption.install()
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # Only process 0 logs progress.
  logging.get_absl_logger().addFilter(_quiet_libraries)
  if FLAGS.config.data.source == 'tfds':
    _hide_accelerators_from_tensorflow()
  logging.info('%s', _run_line(FLAGS.config, FLAGS.workdir,
                               config_flags.get_config_filename(FLAGS['config'])))
  logging.debug('Config:\n%s', FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    preemption.ignore_further_signals()
  except checkpoint.DiskFullError as error:
    # orbax's writer threads failed and cannot be shut down cleanly: leave at once, with the
    # message as the last line rather than their tracebacks at interpreter exit.
    print(' '.join(f'{type(error).__name__}: {error}'.split()), file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access
  except (validation.ConfigError, datasets.DataError, checkpoint.CheckpointError) as error:
    sys.exit(' '.join(f'{type(error).__name__}: {error}'.split()))
  except OSError as error:
    if error.errno != errno.ENOSPC:
      raise
    sys.exit(f'DiskFullError: no space left on the device to write {error.filename}. Fix: free '
             'disk space there (or use a --workdir on a larger disk) and run the same command '
             'again to resume.')
  except preemption.Preempted as stop:
    preemption.ignore_further_signals()
    logging.warning('%s', stop)
    sys.exit(preemption.EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
