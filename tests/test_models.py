"""The models package (latentadv/models): the model registry, the classifiers and their latent
taps, and the ResNets' initialisation as their PyTorch references, for which SLAT's latent step
is sized. ResNet-50 and the convolution have their own files."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from latentadv import base_config
from latentadv import models
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.methods import slat
from latentadv.models import taps


NUM_CLASSES = 10
# name -> (tiny options, input shape, expected tap shapes, feature dim, consumer of 'stem').
CASES = {
    'mnist_cnn': ({}, (2, 28, 28, 1),
                  {'stem': (2, 14, 14, 16), 'stage1': (2, 7, 7, 32)}, 100, 'conv2'),
    'preact_resnet18': ({'width': 8}, (2, 16, 16, 3),
                        {'stem': (2, 16, 16, 8), 'stage1': (2, 16, 16, 8),
                         'stage2': (2, 8, 8, 16), 'stage3': (2, 4, 4, 32),
                         'stage4': (2, 2, 2, 64)}, 64, 'stage1_block1'),
    'wide_resnet': ({'depth': 10, 'widen_factor': 1}, (2, 16, 16, 3),
                    {'stem': (2, 16, 16, 16), 'stage1': (2, 16, 16, 16),
                     'stage2': (2, 8, 8, 32), 'stage3': (2, 4, 4, 64)}, 64, 'stage1_block1'),
    # At least 64x64: at 32x32 ResNet-50's stage4 map is 1x1.
    'resnet50': ({'width': 8}, (2, 64, 64, 3),
                 {'stem': (2, 16, 16, 8), 'stage1': (2, 16, 16, 32),
                  'stage2': (2, 8, 8, 64), 'stage3': (2, 4, 4, 128),
                  'stage4': (2, 2, 2, 256)}, 256, 'stage1_block1'),
}
NAMES = sorted(CASES)


def _key(seed):
  # rbg keys: threefry's random ops compile slowly on CPU, and init draws many shapes.
  return jax.random.key(seed, impl='rbg')


def _stats(channels):
  return dict(mean=(0.4,) * channels, std=(0.2,) * channels)


def _normal(seed, shape, scale=1.):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope='module', params=NAMES)
def case(request):
  """(name, model, variables, x, jitted model.apply) for one registered model at tiny size."""
  name = request.param
  options, shape, *_ = CASES[name]
  model = models.create_model(name, options, num_classes=NUM_CLASSES, **_stats(shape[-1]))
  variables = models.init_variables(model, _key(0), shape)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=shape), jnp.float32)
  apply = jax.jit(model.apply, static_argnames=('train', 'output', 'mutable'))
  return name, model, variables, x, apply


def _deltas(model, variables, x, scale):
  """{tap: (B, ..., C)} normal perturbations of the given scale at every tap."""
  shapes = models.tap_shapes(model.apply, variables, x.shape)
  return {tap: _normal(seed, s.shape, scale)
          for seed, (tap, s) in enumerate(sorted(shapes.items()))}


def _at_input_of(module_name, fn):
  """Interceptor applying fn to the first argument of the top-level submodule module_name."""
  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and context.module.scope.path == (module_name,):
      args = (fn(args[0]),) + tuple(args[1:])
    return next_fun(*args, **kwargs)
  return interceptor


def _loss(model, variables, x, deltas):
  labels = jnp.arange(x.shape[0]) % NUM_CLASSES
  logits = model.apply({**variables, 'perturbations': deltas}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def test_registry_lists_all_models():
  assert sorted(models.MODELS) == NAMES


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='resnet9') as info:
    models.create_model('resnet9', {}, num_classes=10, mean=(0.,), std=(1.,))
  for name in NAMES:
    assert name in str(info.value)


def test_unknown_option_is_an_error():
  with pytest.raises(ValueError, match='widen_factor'):
    models.create_model('preact_resnet18', {'widen_factor': 2}, num_classes=10,
                        mean=(0.,), std=(1.,))


def test_wide_resnet_rejects_bad_depth():
  model = models.create_model('wide_resnet', {'depth': 12, 'widen_factor': 1}, num_classes=10,
                              mean=(0.,), std=(1.,))
  with pytest.raises(ValueError, match=r'6 n \+ 4'):
    models.tap_shapes(model.apply, {}, (1, 8, 8, 1))


def test_output_shapes(case):
  name, _, variables, x, apply = case
  logits = apply(variables, x)
  features = apply(variables, x, output='features')
  chex.assert_shape(logits, (x.shape[0], NUM_CLASSES))
  chex.assert_shape(features, (x.shape[0], CASES[name][3]))
  chex.assert_tree_all_finite((logits, features))
  with pytest.raises(ValueError, match='output'):
    apply(variables, x, output='penultimate')


def test_logits_are_the_linear_head_of_the_features(case):
  _, _, variables, x, apply = case
  head = variables['params']['head']
  features = apply(variables, x, output='features')
  np.testing.assert_allclose(apply(variables, x), features @ head['kernel'] + head['bias'],
                             rtol=1e-5, atol=1e-5)


def test_init_variables_collections(case):
  name, _, variables, _, _ = case
  expected = {'params'} if name == 'mnist_cnn' else {'params', 'batch_stats'}
  assert set(variables) == expected


def test_tap_shapes(case):
  name, model, variables, x, _ = case
  shapes = models.tap_shapes(model.apply, variables, x.shape)
  assert {'stem', 'stage1'} <= set(shapes)
  assert {tap: s.shape for tap, s in shapes.items()} == CASES[name][2]
  for s in shapes.values():
    assert isinstance(s, jax.ShapeDtypeStruct) and s.dtype == jnp.float32


def test_perturbations_at_taps(case):
  _, model, variables, x, apply = case
  clean = apply(variables, x)
  zeros = _deltas(model, variables, x, scale=0.)
  np.testing.assert_array_equal(apply({**variables, 'perturbations': zeros}, x), clean)
  for tap, delta in _deltas(model, variables, x, scale=0.5).items():
    logits = apply({**variables, 'perturbations': {**zeros, tap: delta}}, x)
    assert np.abs(logits - clean).max() > 1e-4, tap


def test_input_and_tap_gradients_from_one_grad_call(case):
  name, model, variables, x, _ = case
  zeros = _deltas(model, variables, x, scale=0.)
  grad_x, grad_deltas = jax.jit(jax.grad(
      lambda x, d: _loss(model, variables, x, d), argnums=(0, 1)))(x, zeros)
  chex.assert_trees_all_equal_shapes(grad_deltas, zeros)
  for tap, g in grad_deltas.items():
    assert np.abs(g).max() > 0, tap
  # At delta = 0 the taps are the identity, so the input gradient is the unperturbed one.
  plain_grad_x = jax.jit(jax.grad(lambda x: _loss(model, variables, x, {})))(x)
  np.testing.assert_allclose(grad_x, plain_grad_x, rtol=1e-5, atol=1e-7)

  # The 'stem' gradient is the gradient w.r.t. the stem feature, read independently by
  # shifting the input of the module that consumes it.
  consumer = CASES[name][4]
  def shifted_loss(shift):
    with nn.intercept_methods(_at_input_of(consumer, lambda h: h + shift)):
      return _loss(model, variables, x, {})
  feature_grad = jax.jit(jax.grad(shifted_loss))(jnp.zeros_like(zeros['stem']))
  # float32 rounding through ResNet-50's 16 blocks reaches ~2e-7.
  np.testing.assert_allclose(grad_deltas['stem'], feature_grad, rtol=1e-5, atol=1e-6)


def test_domain_clip_keeps_features_in_per_sample_channel_range(case):
  name, model, variables, x, _ = case

  @jax.jit
  def stem_feature(deltas):
    """The (perturbed) 'stem' feature, as received by the module that consumes it."""
    seen = []
    def record(h):
      seen.append(h)
      return h
    with nn.intercept_methods(_at_input_of(CASES[name][4], record)):
      model.apply({**variables, 'perturbations': deltas}, x)
    return seen[0]

  clean = stem_feature({})
  moved = stem_feature({'stem': _normal(0, clean.shape, scale=100.)})
  low = clean.min(axis=(1, 2), keepdims=True)
  high = clean.max(axis=(1, 2), keepdims=True)
  assert bool(jnp.all((moved >= low) & (moved <= high)))
  # The perturbation is large, so the clip is active at both ends.
  assert bool(jnp.any(moved == low)) and bool(jnp.any(moved == high))
  assert np.abs(moved - clean).max() > 1e-3


def test_batch_stats_update_only_in_train_mode(case):
  name, _, variables, x, apply = case
  if name == 'mnist_cnn':
    assert 'batch_stats' not in variables
    return
  _, train_state = apply(variables, x, train=True, mutable='batch_stats')
  _, eval_state = apply(variables, x, train=False, mutable='batch_stats')
  chex.assert_trees_all_equal(eval_state['batch_stats'], variables['batch_stats'])
  diffs = jax.tree.map(lambda a, b: np.abs(a - b).max(), train_state['batch_stats'],
                       variables['batch_stats'])
  assert all(d > 0 for d in jax.tree.leaves(diffs))


def test_normalisation_is_inside_the_model(case):
  name, _, variables, x, _ = case
  channels = x.shape[-1]
  mean, std = np.linspace(0.2, 0.6, channels), np.linspace(0.1, 0.3, channels)
  normalising = models.create_model(name, CASES[name][0], num_classes=NUM_CLASSES,
                                    mean=mean, std=std)
  identity = models.create_model(name, CASES[name][0], num_classes=NUM_CLASSES,
                                 mean=(0.,) * channels, std=(1.,) * channels)
  assert normalising.mean == tuple(mean) and normalising.std == tuple(std)
  logits = jax.jit(normalising.apply)(variables, x)
  identity_apply = jax.jit(identity.apply)
  np.testing.assert_allclose(logits, identity_apply(variables, (x - mean) / std),
                             rtol=1e-4, atol=1e-5)
  assert np.abs(logits - identity_apply(variables, x)).max() > 1e-4


def test_wide_resnet_dropout_only_in_train_mode():
  model = models.create_model('wide_resnet', {'depth': 10, 'widen_factor': 1, 'dropout': 0.5},
                              num_classes=NUM_CLASSES, **_stats(3))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 3)), jnp.float32)
  variables = models.init_variables(model, _key(0), x.shape)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  np.testing.assert_array_equal(apply(variables, x), apply(variables, x))
  outputs = [apply(variables, x, train=True, mutable='batch_stats',
                   rngs={'dropout': _key(seed)})[0] for seed in (0, 1)]
  assert np.abs(outputs[0] - outputs[1]).max() > 1e-4



class _TapOnly(nn.Module):
  """A model that is only the tap 'stem' on its input (B, H, W, C)."""

  @nn.compact
  def __call__(self, h):
    return taps.tap(self, 'stem', h)


def test_domain_clip_is_straight_through_for_gradients():
  """As in the SLAT reference code: where the clip binds, the tap's output still passes its
  gradient unchanged to the feature and to the perturbation."""
  h = _normal(0, (2, 5, 5, 3))
  delta = _normal(1, h.shape, scale=10.)
  weights = _normal(2, h.shape)

  def weighted_output(h, delta):
    return (weights * _TapOnly().apply({'perturbations': {'stem': delta}}, h)).sum()

  out = _TapOnly().apply({'perturbations': {'stem': delta}}, h)
  clipped = np.asarray(out != h + delta)
  assert clipped.mean() > 0.5  # the large perturbation is clipped at most positions
  grad_h, grad_delta = jax.grad(weighted_output, argnums=(0, 1))(h, delta)
  np.testing.assert_array_equal(grad_h, weights)
  np.testing.assert_array_equal(grad_delta, weights)


# ------------------------------------------------------------------------------- Initialisation

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
