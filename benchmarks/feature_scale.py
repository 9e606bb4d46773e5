"""Scale of SLAT's tapped features of PreActResNet-18 at initialisation, per initialisation.

  python benchmarks/feature_scale.py --data_dir=../shared/data/cifar10 --output=FILE.json

For each initialisation ('torch', 'he'), width and seed, the `stem` and `stage1` feature maps
of the freshly initialised model on the first --n_examples CIFAR-10 test images, in train mode
(batch statistics, as SLAT's passes run): their standard deviation over all entries, the mean
over channels of the per-channel standard deviation (what `eps_h_scale='feature_std'`
scales by; its `reference_feature_std` default comes from here), and eps_h / std for the
default latent radius eps_h = 8/255. Writes FILE.json {"rows": [{"init", "width", "seed",
"tap", "std", "mean_channel_std", "eps_h_fraction"}], "n_examples"} and FILE.md.
"""

import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import base_config
from latentadv import compilation
from latentadv import models
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.methods import slat

CIFAR = datasets.DATASETS['cifar10']
# The submodule whose output each SLAT tap perturbs (models/preact_resnet.py).
TAP_PRODUCERS = {'stem': 'stem_conv', 'stage1': 'stage1_block2'}


def tapped_features(width: int, init: str, seed: int, images: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """{tap: (B, H, W, C)} the `stem` and `stage1` features of a PreActResNet-18 of `width`
  initialised with `init` and `seed`, on images (B, 32, 32, 3), BatchNorm in train mode."""
  options = {**models.MODEL_DEFAULTS['preact_resnet18'], 'width': width, 'init': init}
  model = models.create_model('preact_resnet18', options, num_classes=CIFAR.num_classes,
                              mean=CIFAR.mean, std=CIFAR.std)
  variables = models.init_variables(model, jax.random.key(seed), images.shape)
  _, state = model.apply(variables, images, train=True, capture_intermediates=True,
                         mutable=['batch_stats', 'intermediates'])
  return {tap: np.asarray(state['intermediates'][producer]['__call__'][0])
          for tap, producer in TAP_PRODUCERS.items()}


def main(argv):
  del argv
  compilation.enable_cache()
  config = base_config.get_config().data
  config.source, config.dir = 'local', FLAGS.data_dir
  images = readers.load_split(config, 'test')[0][:FLAGS.n_examples]
  eps_h = slat.latent_radius(base_config.get_config().method)
  rows = []
  for init in ('torch', 'he'):
    for width in map(int, FLAGS.widths):
      for seed in range(FLAGS.seeds):
        for tap, h in tapped_features(width, init, seed, images).items():
          rows.append({'init': init, 'width': width, 'seed': seed, 'tap': tap,
                       'std': float(h.std()),
                       'mean_channel_std': float(h.std(axis=(0, 1, 2)).mean()),
                       'eps_h_fraction': float(eps_h / h.std())})
  lines = ['| init | width | seed | tap | std | mean channel std | eps_h / std |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["init"]} | {r["width"]} | {r["seed"]} | {r["tap"]} | {r["std"]:.3f} | '
            f'{r["mean_channel_std"]:.3f} | {r["eps_h_fraction"]:.3f} |' for r in rows]
  print('\n'.join(lines))
  if FLAGS.output:
    step_cost.write_results(FLAGS.output, {'rows': rows, 'n_examples': FLAGS.n_examples},
                            f'Tapped features of PreActResNet-18 at initialisation, first '
                            f'{FLAGS.n_examples} CIFAR-10 test images, train-mode BatchNorm.'
                            '\n\n' + '\n'.join(lines))


if __name__ == '__main__':
  FLAGS = flags.FLAGS
  flags.DEFINE_string('data_dir', '../shared/data/cifar10', 'CIFAR-10 canonical files.')
  flags.DEFINE_integer('n_examples', 256, 'Test images.')
  flags.DEFINE_list('widths', ['16', '64'], 'Widths.')
  flags.DEFINE_integer('seeds', 3, 'Initialisation seeds 0..n-1.')
  flags.DEFINE_string('output', None, 'JSON output (and .md beside it).')
  app.run(main)
