"""The ResNets are initialised as their PyTorch references, and SLAT's latent step is sized
for that initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from latentadv import base_config
from latentadv import models
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.methods import slat

CIFAR = datasets.DATASETS['cifar10']
# The smallest ratio eps_h / std(tapped feature map) SLAT's latent step keeps at the reference
# initialisation on CIFAR-10 (measured 0.043 at `stage1` and 0.055 at `stem`, width 16); the
# He-initialised model's `stage1` features are about twice as large (ratio 0.022).
MIN_LATENT_STEP_FRACTION = 0.035


def _preact(width: int, init: str):
  options = {**models.MODEL_DEFAULTS['preact_resnet18'], 'width': width, 'init': init}
  return models.create_model('preact_resnet18', options, num_classes=CIFAR.num_classes,
                             mean=CIFAR.mean, std=CIFAR.std)


def _flat_params(model, seed=0):
  variables = models.init_variables(model, jax.random.key(seed), (1, 32, 32, 3))
  return traverse_util.flatten_dict(variables['params'], sep='/'), variables


def _assert_uniform(values: np.ndarray, bound: float, name: str):
  """values are i.i.d. U(-bound, bound): inside the bound, reaching close to it, variance
  bound^2 / 3 within 5 standard errors (the sample variance of a uniform has relative standard
  error sqrt(0.8 / n))."""
  n = values.size
  assert np.abs(values).max() <= bound, name
  if n >= 100:
    assert np.abs(values).max() >= bound * (1 - 10 / n), name
  assert values.var() == pytest.approx(bound ** 2 / 3, rel=5 * np.sqrt(0.8 / n)), name


def _assert_he_normal_convs(params: dict):
  """Every conv kernel (kh, kw, C_in, C_out) in the flat `params` has variance
  2 / (kh kw C_out) within 5 standard errors (relative standard error sqrt(2 / n))."""
  for name, value in params.items():
    value = np.asarray(value)
    if name.endswith('kernel') and value.ndim == 4:
      kh, kw, _, c_out = value.shape
      expected = 2 / (kh * kw * c_out)
      assert value.var() == pytest.approx(expected, rel=5 * np.sqrt(2 / value.size)), name


def test_default_preact_resnet18_is_initialised_as_pytorch_default():
  """Every conv kernel U(+-1/sqrt(kh kw C_in)), the head's kernel and bias U(+-1/sqrt(D)),
  BatchNorm scale 1 and bias 0: nn.Conv2d / nn.Linear / nn.BatchNorm2d defaults."""
  width = 16
  params, variables = _flat_params(_preact(width, models.MODEL_DEFAULTS['preact_resnet18']['init']))
  kinds = {'conv': 0, 'bn': 0}
  for name, value in params.items():
    value = np.asarray(value)
    if name.endswith('kernel') and value.ndim == 4:
      kh, kw, c_in, _ = value.shape
      _assert_uniform(value, (kh * kw * c_in) ** -0.5, name)
      kinds['conv'] += 1
    elif name.startswith('head/'):
      _assert_uniform(value, (8 * width) ** -0.5, name)
    elif name.endswith('/scale'):
      np.testing.assert_array_equal(value, 1.0, err_msg=name)
      kinds['bn'] += 1
    else:
      assert name.endswith('/bias') and 'bn' in name, name
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
  # stem + 8 blocks x 2 convs + 3 strided shortcuts; 8 x 2 block BNs + the final BN.
  assert kinds == {'conv': 20, 'bn': 17}
  np.testing.assert_array_equal(
      np.asarray(jax.tree.leaves(variables['batch_stats'])[0]), 0.0)


def test_he_initialisation_stays_available():
  """init='he': conv kernels N(0, 2 / (kh kw C_out)), the head Flax's default (zero bias)."""
  params, _ = _flat_params(_preact(16, 'he'))
  _assert_he_normal_convs(params)
  np.testing.assert_array_equal(np.asarray(params['head/bias']), 0.0)


def test_unknown_initialisation_is_an_error():
  with pytest.raises(ValueError, match='initialization must be one of'):
    _flat_params(_preact(4, 'xavier'))


def test_wide_resnet_is_initialised_as_the_trades_reference():
  """He-normal fan-out convs, BatchNorm 1 / 0, head kernel U(+-1/sqrt(D)) and bias 0."""
  model = models.create_model('wide_resnet', {'depth': 10, 'widen_factor': 2, 'dropout': 0.0},
                              num_classes=10, mean=CIFAR.mean, std=CIFAR.std)
  params, _ = _flat_params(model)
  _assert_he_normal_convs(params)
  _assert_uniform(np.asarray(params['head/kernel']), 128 ** -0.5, 'head/kernel')
  np.testing.assert_array_equal(np.asarray(params['head/bias']), 0.0)


@pytest.fixture(scope='module')
def cifar_test_images(data_root):
  config = base_config.get_config().data
  config.source, config.dir = 'local', f'{data_root}/cifar10'
  images, _ = readers.load_split(config, 'test')
  return jnp.asarray(images[:128])


# The submodule whose output each SLAT tap perturbs (models/preact_resnet.py).
TAP_PRODUCERS = {'stem': 'stem_conv', 'stage1': 'stage1_block2'}


def _latent_step_fractions(init: str, images) -> dict[str, float]:
  """eps_h / std of each SLAT-tapped feature map of the width-16 model initialised with `init`,
  at initialisation on `images` (train-mode BatchNorm, as SLAT's passes run)."""
  eps_h = slat.latent_radius(base_config.get_config().method)
  model = _preact(16, init)
  variables = models.init_variables(model, jax.random.key(0), images.shape)
  _, state = model.apply(variables, images, train=True, capture_intermediates=True,
                         mutable=['batch_stats', 'intermediates'])
  return {tap: eps_h / float(state['intermediates'][producer]['__call__'][0].std())
          for tap, producer in TAP_PRODUCERS.items()}


def test_slat_latent_step_is_a_meaningful_fraction_of_the_features(cifar_test_images):
  """At the default initialisation the latent step eps_h is at least 3.5 % of the standard
  deviation of every tapped feature map on CIFAR-10; with He init it is not (SLAT then gives
  no robustness: the README's CIFAR-10 results)."""
  default_init = models.MODEL_DEFAULTS['preact_resnet18']['init']
  fractions = _latent_step_fractions(default_init, cifar_test_images)
  assert min(fractions.values()) >= MIN_LATENT_STEP_FRACTION, fractions
  he_fractions = _latent_step_fractions('he', cifar_test_images)
  assert min(he_fractions.values()) < MIN_LATENT_STEP_FRACTION, he_fractions
