"""Every registered method on full MNIST at eps 0.3, same budget (configs/mnist_<method>.py:
10 epochs, except mnist_pgd.py's reference recipe), 2 seeds; PGD-50-10 and the
AutoAttack-style suite. Writes benchmarks/results/mnist_suite.{json,md}.

  python benchmarks/mnist_suite.py --data_dir=../shared/data/mnist
  python benchmarks/mnist_suite.py --data_dir=../shared/data/mnist --methods=slat,fgsm_rs \
      --seeds=0 --autoattack_examples=1000

See benchmarks/suite.py for the flags and outputs.
"""

import os
import sys

from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import suite  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import methods  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG_PREFIX = 'mnist'
METHODS = list(methods.METHODS)


def main(argv):
  del argv
  suite.run_suite('mnist_suite', CONFIG_PREFIX, METHODS, [0.3])


if __name__ == '__main__':
  app.run(main)
