"""python -m latentadv.evaluate --workdir=DIR [--state=last] [--seed_index=K] [--config.eval.suite=autoattack ...]

Evaluates the run in DIR with the config saved there (overridable by --config.*) and writes
DIR/eval_<suite>.json and .npz (evaluate/workdir.py); an interrupted evaluation continues
when the same command runs again.
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from latentadv import base_config
from latentadv import checkpoint
from latentadv import compilation
from latentadv import seeds
from latentadv.evaluate import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of a training run (with config.json).')
flags.DEFINE_enum('state', 'kept', checkpoint.STATES, checkpoint.STATE_HELP)
flags.DEFINE_integer('seed_index', None, seeds.SEED_INDEX_HELP + ' Default: every seed.')
flags.mark_flag_as_required('workdir')
config_flags.DEFINE_config_dict(
    'config', base_config.get_config(),
    'Overrides of the saved config, e.g. --config.eval.suite=autoattack.')


def main(argv):
  del argv
  compilation.enable_cache()
  config = workdir_lib.workdir_config(FLAGS.workdir, base_config.get_config(),
                                      config_flags.get_override_values(FLAGS['config']))
  result = workdir_lib.evaluate_workdir(FLAGS.workdir, config, FLAGS.state, FLAGS.seed_index)
  logging.info('%s', json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
