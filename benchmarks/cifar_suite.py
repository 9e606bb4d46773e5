"""CIFAR-10 at a CPU-feasible scale: the `cpu` preset of configs/cifar_<method>.py
(PreActResNet-18 of width 16, the first 10,000 training images, 10 epochs, final PGD-50-2 on
1,000 test images) for every method below, at eps 8/255 and 16/255 (where FGSM-RS is known to
overfit catastrophically). Writes benchmarks/results/cifar_suite.{json,md}.

  python benchmarks/cifar_suite.py --data_dir=../shared/data/cifar10

See benchmarks/suite.py for the flags and outputs; on an accelerator, --preset= gives the
papers' recipe (30 epochs, full width).
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import suite  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG_PREFIX = 'cifar'
METHODS = ['standard', 'slat', 'fgsm', 'fgsm_rs', 'n_fgsm', 'pgd', 'backward_smoothing', 'eae',
           'slat_ga', 'trades', 'gradalign']


def main(argv):
  del argv
  suite.run_suite('cifar_suite', CONFIG_PREFIX, METHODS, [8 / 255, 16 / 255])


if __name__ == '__main__':
  flags.FLAGS.set_default('preset', 'cpu')
  flags.FLAGS.set_default('seeds', ['0'])
  app.run(main)
