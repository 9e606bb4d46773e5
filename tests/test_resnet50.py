"""Tests for ResNet-50: torchvision's layout and initialisation, its taps, bfloat16, SLAT."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from latentadv import base_config
from latentadv import methods
from latentadv import models
from latentadv import parallel
from latentadv import train_state
from latentadv import train
from latentadv import validation

WIDTH = 8
NUM_CLASSES = 10
SHAPE = (2, 64, 64, 3)
STATS = dict(mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3))
TORCHVISION_RESNET50_PARAMETERS = 25_557_032


def _model(dtype='float32', **options):
  options = {**models.MODEL_DEFAULTS['resnet50'], 'width': WIDTH, **options}
  return models.create_model('resnet50', options, num_classes=NUM_CLASSES, dtype=dtype, **STATS)


def _init(model, seed=0):
  # rbg keys: threefry's random ops compile slowly on CPU, and init draws many shapes.
  return models.init_variables(model, jax.random.key(seed, impl='rbg'), SHAPE)


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, x (2, 64, 64, 3)) of the width-8, 10-class ResNet-50."""
  model = _model()
  x = jax.random.uniform(jax.random.key(1), SHAPE)
  return model, _init(model), x


def test_logits_and_features_shapes(tiny):
  """Logits (B, classes) and features (B, 32 width), finite."""
  model, variables, x = tiny
  logits, features = jax.jit(lambda v, x: (
      model.apply(v, x), model.apply(v, x, output='features')))(variables, x)
  chex.assert_shape(logits, (2, NUM_CLASSES))
  chex.assert_shape(features, (2, 32 * WIDTH))
  chex.assert_tree_all_finite((logits, features))


def test_full_model_has_torchvision_resnet50_parameter_count_and_taps():
  """Width 64 and 1000 classes: torchvision's 25,557,032 parameters; the taps at 224x224."""
  model = models.create_model('resnet50', models.MODEL_DEFAULTS['resnet50'], num_classes=1000,
                              **STATS)
  shape = (1, 224, 224, 3)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == (
      TORCHVISION_RESNET50_PARAMETERS)
  shapes = models.tap_shapes(model.apply, variables, shape)
  assert {tap: s.shape for tap, s in shapes.items()} == {
      'stem': (1, 56, 56, 64), 'stage1': (1, 56, 56, 256), 'stage2': (1, 28, 28, 512),
      'stage3': (1, 14, 14, 1024), 'stage4': (1, 7, 7, 2048)}


def test_tap_shapes(tiny):
  """The stem (after the max-pool) and every stage is a float32 tap, at 64x64 and width 8."""
  model, variables, _ = tiny
  shapes = models.tap_shapes(model.apply, variables, SHAPE)
  assert {tap: s.shape for tap, s in shapes.items()} == {
      'stem': (2, 16, 16, WIDTH), 'stage1': (2, 16, 16, 4 * WIDTH),
      'stage2': (2, 8, 8, 8 * WIDTH), 'stage3': (2, 4, 4, 16 * WIDTH),
      'stage4': (2, 2, 2, 32 * WIDTH)}
  assert {s.dtype for s in shapes.values()} == {jnp.dtype(jnp.float32)}


def test_stride_is_on_the_3x3_convolution(tiny):
  """ResNet v1.5: the first block of stage 2 keeps the resolution in conv1, halves it in conv2."""
  model, variables, x = tiny
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True),
                            variables, x)
  block = state['intermediates']['stage2_block1']
  chex.assert_shape(block['conv1']['__call__'][0], (2, 16, 16, 2 * WIDTH))
  chex.assert_shape(block['conv2']['__call__'][0], (2, 8, 8, 2 * WIDTH))
  chex.assert_shape(block['shortcut_conv']['__call__'][0], (2, 8, 8, 8 * WIDTH))


def test_initialised_as_torchvision(tiny):
  """Conv kernels N(0, 2 / (kh kw C_out)) (variance within 5 standard errors, relative
  standard error sqrt(2 / n)), BatchNorm scale 1 and bias 0, the head's kernel and bias
  U(+-1/sqrt(32 width)) (inside the bound, reaching close to it, variance bound^2 / 3)."""
  params = traverse_util.flatten_dict(tiny[1]['params'], sep='/')
  convs = {name: np.asarray(v) for name, v in params.items() if v.ndim == 4}
  assert len(convs) == 1 + 16 * 3 + 4  # stem, 16 blocks of 3, 4 projection shortcuts
  for name, kernel in convs.items():
    kh, kw, _, c_out = kernel.shape
    assert kernel.var() == pytest.approx(2 / (kh * kw * c_out),
                                         rel=5 * np.sqrt(2 / kernel.size)), name
  norms = {name: np.asarray(v) for name, v in params.items()
           if v.ndim == 1 and not name.startswith('head/')}
  assert len(norms) == 2 * len(convs)  # a BatchNorm (scale, bias) after every convolution
  for name, value in norms.items():
    np.testing.assert_array_equal(value, 1.0 if name.endswith('/scale') else 0.0, name)
  bound = (32 * WIDTH) ** -0.5
  for name in ('head/kernel', 'head/bias'):
    value = np.asarray(params[name])
    assert np.abs(value).max() <= bound, name
    assert value.var() == pytest.approx(bound ** 2 / 3, rel=5 * np.sqrt(0.8 / value.size)), name
  assert np.abs(params['head/kernel']).max() >= bound * (1 - 10 / params['head/kernel'].size)


def test_zero_init_residual_zeroes_each_blocks_last_batchnorm_scale():
  """zero_init_residual: bn3's scale is 0 in all 16 blocks, every other BatchNorm's 1."""
  model = _model(zero_init_residual=True)
  params = traverse_util.flatten_dict(_init(model)['params'], sep='/')
  scales = {name: np.asarray(v) for name, v in params.items() if name.endswith('/scale')}
  assert sum(name.endswith('bn3/scale') for name in scales) == 16
  for name, scale in scales.items():
    np.testing.assert_array_equal(scale, 0.0 if name.endswith('bn3/scale') else 1.0, name)


def test_unknown_initialisation_is_an_error():
  """Only torchvision's initialisation is defined."""
  with pytest.raises(ValueError, match='initialization must be one of'):
    _init(_model(init='he'))


def test_bfloat16_compute_has_float32_params_and_outputs(tiny):
  """bfloat16 compute: float32 params, float32 logits and features close to float32's."""
  model32, variables, x = tiny
  model16 = _model('bfloat16')
  variables16 = jax.eval_shape(lambda: _init(model16))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables16)} == {jnp.dtype(jnp.float32)}
  logits32, logits16, features16 = jax.jit(lambda v, x: (
      model32.apply(v, x), model16.apply(v, x), model16.apply(v, x, output='features')))(
          variables, x)
  chex.assert_type((logits16, features16), jnp.float32)
  scale = float(jnp.abs(logits32).max())
  # bfloat16 keeps about 3 significant digits.
  assert 0 < float(jnp.abs(logits16 - logits32).max()) < 0.03 * scale


def test_slat_train_step_on_eight_devices_changes_the_params():
  """One jitted SLAT step (input and 'stem', 'stage1' perturbations) of the width-8 model on
  CIFAR-sized batches over 8 devices: a finite loss, and every parameter moves."""
  config = base_config.get_config('smoke')
  config.model.name = 'resnet50'
  config.model.resnet50.width = WIDTH
  config.method.name = 'slat'
  config.optim.batch_size = 16
  config.optim.schedule = 'constant'  # the cyclic schedule's first step has learning rate 0
  validation.validate(config)
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 100)
  tx = train_state.make_optimizer(config.optim, schedule)
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  initial = jax.device_put(
      train_state.init_state(model, tx, jax.random.key(0, impl='rbg'), (32, 32, 3)),
      parallel.replicated(mesh))
  before = jax.device_get(initial.params)
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS['slat'].loss, tx, schedule, config),
      initial, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((16, 32, 32, 3), dtype=np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  state, metrics = step(initial, parallel.global_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  after = jax.device_get(state.params)
  chex.assert_trees_all_equal_shapes_and_dtypes(after, before)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), after, before)
  assert all(jax.tree.leaves(changed)), changed
