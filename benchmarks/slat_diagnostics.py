"""Which inputs a SLAT-trained model classifies well: clean, or the perturbed ones it trained on.

  python benchmarks/slat_diagnostics.py --workdir=runs/cifar_suite/slat_eps0.03137_seed0 \
      --data_dir=../shared/data/cifar10

On the first --n_examples test images, accuracy (BatchNorm in eval mode, running averages) of
the latest checkpoint on: the clean image; the SLAT input perturbation alone (alpha eps
sign(g_x), no random start); the latent perturbations alone (eps_h sign(g_l) at the taps);
both (what SLAT trains on); and the clean image with BatchNorm on the batch's own statistics
(whether the running averages are to blame). Each perturbation is built from the true label and, as a control,
from a wrong one ((y + 1) mod classes). A model that is more accurate on its own training
perturbations than on clean images, whatever label built them, has fitted the perturbed
distribution rather than become robust. Also the scale of each tapped feature map of the
trained model (mean over channels of the per-channel std, BatchNorm on batch statistics as
SLAT's passes run) and the latent radius as a fraction of it: how strong the latent push is at
the end of training, whichever `eps_h_scale` the run used. Prints and writes JSON (--output).
"""

import json
import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from latentadv import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.data import datasets  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.data import readers  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.methods import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.methods import slat  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.models import taps  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

INPUTS = ('clean', 'input_perturbation', 'latent_perturbation', 'both',
          'clean_batch_statistics')


def _split(variables) -> tuple[dict, dict]:
  """(params, model_state) of a model's variables."""
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def accuracies(model, variables, config, images: np.ndarray, labels: np.ndarray,
               build_labels: np.ndarray) -> dict[str, np.ndarray]:
  """Per-example correctness (B,) on each of INPUTS for images (B, H, W, C) and labels (B,);
  the perturbations are built from build_labels (B,)."""
  params, model_state = _split(variables)
  x_adv, deltas, _, _ = slat.perturb(model.apply, params, model_state, images, build_labels,
                                  jax.random.key(0), config.method)
  inputs = {'clean': (images, None, False), 'input_perturbation': (x_adv, None, False),
            'latent_perturbation': (images, deltas, False), 'both': (x_adv, deltas, False),
            'clean_batch_statistics': (images, None, True)}
  out = {}
  for name, (x, perturbations, train) in inputs.items():
    logits, _ = common.forward(model.apply, params, model_state, x, jax.random.key(1),
                               train=train, perturbations=perturbations)
    out[name] = logits.argmax(-1) == labels
  return out


def mean_channel_std(model, variables, images: np.ndarray) -> dict[str, jax.Array]:
  """Per tap, the mean over channels of the per-channel std of its feature map for images
  (B, H, W, C), BatchNorm on the batch's statistics; a scalar per tap."""
  params, model_state = _split(variables)
  _, state = common.forward(model.apply, params, model_state, images, jax.random.key(1),
                            train=True, capture=(taps.FEATURE_STD,))
  return {name: std.mean() for name, std in state[taps.FEATURE_STD].items()}


def latent_scale(config, stds: dict[str, float]) -> dict[str, dict[str, float]]:
  """Per tap in config.method.slat.taps: its mean channel std (from `stds`), the mean latent
  radius SLAT uses there under the run's eps_h_scale, and the radius as a fraction of the std."""
  out = {}
  for name in config.method.slat.taps:
    radius = slat.tap_radius(config.method, stds[name])
    out[name] = {'mean_channel_std': stds[name], 'latent_radius': radius,
                 'radius_over_std': radius / stds[name]}
  return out


def main(argv):
  del argv
  compilation.enable_cache()
  data_overrides = {'data.source': 'local', 'data.dir': FLAGS.data_dir} if FLAGS.data_dir else {}
  config = evaluate.workdir_config(FLAGS.workdir, base_config.get_config(), data_overrides)
  if config.method.name not in ('slat', 'slat_ga'):
    raise app.UsageError(f'{FLAGS.workdir} was trained with {config.method.name}, not SLAT.')
  model, variables = train_state.restore_variables(FLAGS.workdir, config)
  images, labels = readers.load_split(config.data, 'test')
  images, labels = images[:FLAGS.n_examples], labels[:FLAGS.n_examples]
  classes = datasets.DATASETS[config.data.name].num_classes
  run = jax.jit(lambda x, y, build: accuracies(model, variables, config, x, y, build))
  results = {}
  for label_kind in ('true_label', 'wrong_label'):
    correct = {name: [] for name in INPUTS}
    for start in range(0, len(labels), FLAGS.batch_size):
      x, y = images[start:start + FLAGS.batch_size], labels[start:start + FLAGS.batch_size]
      build = y if label_kind == 'true_label' else (y + 1) % classes
      for name, value in run(x, y, build).items():
        correct[name].append(np.asarray(value))
    results[label_kind] = {name: float(np.concatenate(v).mean()) for name, v in correct.items()}
    print(label_kind, results[label_kind])
  scale = jax.jit(lambda x: mean_channel_std(model, variables, x))
  batch_stds = [scale(images[start:start + FLAGS.batch_size])
                for start in range(0, len(labels), FLAGS.batch_size)]
  stds = {name: float(np.mean([b[name] for b in batch_stds])) for name in batch_stds[0]}
  results['latent_scale'] = latent_scale(config, stds)
  print('latent_scale', results['latent_scale'])
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'slat_diagnostics.json')
  with open(output, 'w') as f:
    json.dump({'workdir': FLAGS.workdir, 'n_examples': len(labels), **results}, f, indent=1)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A run trained with SLAT (its config.json is read).')
  flags.DEFINE_string('data_dir', '', 'Canonical data files ("" = the run\'s data config).')
  flags.DEFINE_integer('n_examples', 1000, 'First n test images.')
  flags.DEFINE_integer('batch_size', 250, 'Images per batch.')
  flags.DEFINE_string('output', '', 'JSON path ("" = WORKDIR/slat_diagnostics.json).')
  flags.mark_flag_as_required('workdir')
  app.run(main)
