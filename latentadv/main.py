"""Command-line trainer.

  python -m latentadv.main --config=configs/cifar_slat.py[:preset] --workdir=DIR \
      [--config.data.source=local --config.data.dir=../shared/data/cifar10 ...]

Re-running the same command resumes from the latest checkpoint in DIR.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py), optionally '
                                'followed by :preset.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_libraries(record) -> bool:
  """Drops the per-save INFO lines of orbax; its warnings and errors still show."""
  return record.levelno >= logging.converter.STANDARD_WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_logger().addFilter(_quiet_libraries)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # TF (tfds, TensorBoard) must not take accelerators.
  logging.info('Config:\n%s', FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
