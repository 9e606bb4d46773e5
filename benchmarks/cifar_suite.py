"""CIFAR-10 suites, at two scales (--scale), each writing benchmarks/results/<suite>.{json,md}.

cpu (suite `cifar_suite`): the `cpu` preset of configs/cifar_<method>.py (PreActResNet-18 of
width 16, the first 10,000 training images, 10 epochs, final PGD-50-2 on 1,000 test images) for
every method below, at eps 8/255 and 16/255 (where FGSM-RS is known to overfit
catastrophically):

  python benchmarks/cifar_suite.py --data_dir=../shared/data/cifar10

paper (suite `cifar_suite_paper`, for an accelerator): the papers' recipe of
configs/cifar_<method>.py unchanged (PreActResNet-18 of width 64, all 50,000 training images,
30 epochs, batch 128, cyclic learning rate peaking at 0.2) for the single-step methods slat,
fgsm_rs, n_fgsm and gradalign at eps 8/255, 12/255 and 16/255; final PGD-50-10 on the full
test set and the AutoAttack-style suite on the first 1,000 test images (of the kept state):

  python benchmarks/cifar_suite.py --scale=paper --data_dir=../shared/data/cifar10 --jobs=4

See benchmarks/suite.py for the other flags and the outputs.
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
PAPER_METHODS = ['slat', 'fgsm_rs', 'n_fgsm', 'gradalign']
PAPER_EPS = [8 / 255, 12 / 255, 16 / 255]

flags.DEFINE_enum('scale', 'cpu', ['cpu', 'paper'], 'cpu: the cpu preset, every method, '
                  '8/255 and 16/255; paper: the full recipe of the single-step methods at '
                  '8/255, 12/255 and 16/255, PGD-50-10 on the full test set.')


def main(argv):
  del argv
  if flags.FLAGS.scale == 'paper':
    for name, value in (('preset', ''), ('pgd_examples', 0)):
      if not flags.FLAGS[name].present:
        flags.FLAGS[name].value = value
    suite.run_suite('cifar_suite_paper', CONFIG_PREFIX, PAPER_METHODS, PAPER_EPS)
  else:
    suite.run_suite('cifar_suite', CONFIG_PREFIX, METHODS, [8 / 255, 16 / 255])


if __name__ == '__main__':
  flags.FLAGS.set_default('preset', 'cpu')
  flags.FLAGS.set_default('seeds', ['0'])
  app.run(main)
