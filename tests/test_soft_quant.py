"""Soft-quantisation layer, its straight-through (BPDA) surrogate, and the soft_quant method."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar_soft_quant
from configs import mnist_soft_quant
from latentadv import models
from latentadv import train_state
from latentadv import train
from latentadv import validation
from latentadv.data import datasets
from latentadv.methods import common
from latentadv.methods import soft_quant as soft_quant_method
from latentadv.models import soft_quant

MODEL_CASES = {  # name: (options with tiny widths, input shape)
    'mnist_cnn': ({}, (2, 28, 28, 1)),
    'preact_resnet18': ({'width': 4}, (2, 32, 32, 3)),
    'wide_resnet': ({'depth': 10, 'widen_factor': 1}, (2, 32, 32, 3)),
}


def _quantizer_fn(levels, temperature, straight_through=False, offsets=None):
  """A jitted x -> q(x) of a SoftQuantizer with the given threshold offsets (default 0)."""
  layer = soft_quant.SoftQuantizer(levels, temperature, learnable=True,
                                   straight_through=straight_through)
  offsets = jnp.zeros(levels) if offsets is None else jnp.asarray(offsets, jnp.float32)
  variables = {'params': {'threshold_offsets': offsets}}
  return jax.jit(functools.partial(layer.apply, variables))


def _model(name, soft_quant_options=None):
  options, shape = MODEL_CASES[name]
  channels = shape[-1]
  return models.create_model(name, options, num_classes=10, mean=(0.5,) * channels,
                             std=(0.25,) * channels, soft_quant=soft_quant_options)


@pytest.mark.parametrize('levels, temperature, offsets', [
    (1, 0.05, None),
    (8, 0.01, None),
    (4, 0.5, None),
    (4, 0.02, [0.3, -0.1, 0.2, -0.4]),  # learned thresholds out of order and outside the grid
])
def test_quantiser_is_monotone_and_maps_the_unit_interval_into_itself(levels, temperature,
                                                                      offsets):
  x = jnp.linspace(0.0, 1.0, 2001).reshape(1, -1, 1, 1)
  q = np.asarray(_quantizer_fn(levels, temperature, offsets=offsets)(x)).ravel()
  assert np.all(np.diff(q) >= 0)
  assert q[-1] > q[0]
  assert q.min() >= 0.0 and q.max() <= 1.0


def test_small_temperature_rounds_to_the_grid_of_multiples_of_one_over_levels():
  levels = 4
  x = np.random.default_rng(0).random((1, 64, 64, 1), dtype=np.float32)
  distance_to_threshold = np.abs(x[..., None] - np.asarray(soft_quant.initial_thresholds(levels)))
  away = distance_to_threshold.min(-1) > 0.02
  q = np.asarray(_quantizer_fn(levels, 1e-3)(x))
  np.testing.assert_allclose(q[away], np.round(levels * x[away]) / levels, atol=1e-6)


def test_plain_gradient_vanishes_off_the_thresholds_and_straight_through_is_the_identity():
  levels, temperature = 4, 0.005
  # Values at least 0.1 (20 T) from every threshold (0.125, 0.375, 0.625, 0.875).
  x = jnp.asarray([0.0, 0.02, 0.25, 0.27, 0.5, 0.52, 0.75, 1.0]).reshape(1, 2, 4, 1)
  real = _quantizer_fn(levels, temperature)
  surrogate = _quantizer_fn(levels, temperature, straight_through=True)
  # q acts elementwise, so the gradient of its sum is its Jacobian's diagonal.
  real_grad = jax.jit(jax.grad(lambda x: real(x).sum()))(x)
  surrogate_grad = jax.jit(jax.grad(lambda x: surrogate(x).sum()))(x)
  np.testing.assert_array_equal(surrogate(x), real(x))
  np.testing.assert_array_equal(surrogate_grad, np.ones(x.shape))
  assert np.abs(real_grad).max() < 1e-6
  # At a threshold the plain gradient is large: 1 / (4 K T) = 12.5.
  at_threshold = jnp.full((1, 1, 1, 1), 0.125)
  assert jax.grad(lambda x: real(x).sum())(at_threshold).item() == pytest.approx(12.5, rel=1e-5)


def test_surrogate_model_has_the_same_outputs_and_differentiates_the_model_at_q_x():
  options = {'levels': 2, 'temperature': 0.01, 'learnable': True}
  model = _model('mnist_cnn', options)
  base = _model('mnist_cnn')
  surrogate = models.straight_through(model)
  assert models.has_quantiser(model) and not models.has_quantiser(base)
  assert models.straight_through(base) is base
  shape = MODEL_CASES['mnist_cnn'][1]
  variables = models.init_variables(model, jax.random.key(0), shape)
  variables['params']['soft_quant']['threshold_offsets'] = jnp.asarray([0.05, -0.03])
  base_variables = {'params': {k: v for k, v in variables['params'].items()
                               if k != 'soft_quant'}}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random(shape, dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, 10, shape[0]))

  def input_grad(apply_fn, variables, x):
    return common.input_gradient(functools.partial(apply_fn, variables), x, labels)

  logits, surrogate_logits = jax.jit(
      lambda x: (model.apply(variables, x), surrogate.apply(variables, x)))(x)
  np.testing.assert_array_equal(surrogate_logits, logits)
  # BPDA: the surrogate's input gradient is the unquantised model's gradient at q(x).
  q = model.apply(variables, x, method=lambda m, x: m.soft_quant(x))
  surrogate_grad, base_grad_at_q = jax.jit(
      lambda x, q: (input_grad(surrogate.apply, variables, x),
                    input_grad(base.apply, base_variables, q)))(x, q)
  np.testing.assert_allclose(surrogate_grad, base_grad_at_q, rtol=1e-5, atol=1e-7)
  # On grid values (0, 0.5, 1) the plain input gradient is masked, the surrogate's is not.
  x_grid = jnp.round(2 * x) / 2
  real_grad, surrogate_grad = jax.jit(
      lambda x: (input_grad(model.apply, variables, x),
                 input_grad(surrogate.apply, variables, x)))(x_grid)
  assert np.abs(real_grad).max() < 1e-6 * np.abs(surrogate_grad).max()
  assert np.abs(surrogate_grad).max() > 0


@pytest.mark.parametrize('learnable', [True, False])
@pytest.mark.parametrize('name', sorted(MODEL_CASES))
def test_variables_are_the_models_plus_the_quantisers_threshold_offsets(name, learnable):
  shape = MODEL_CASES[name][1]
  model = _model(name, {'levels': 3, 'temperature': 0.05, 'learnable': learnable})

  def shapes(model):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    return jax.tree.map(lambda leaf: leaf.shape, variables)
  without = shapes(_model(name))
  with_quantiser = shapes(model)
  assert shapes(models.straight_through(model)) == with_quantiser
  params = dict(with_quantiser['params'])
  quantiser = params.pop('soft_quant', None)
  assert quantiser == ({'threshold_offsets': (3,)} if learnable else None)
  assert params == without['params']
  # The other collections ('batch_stats', the taps' 'perturbations') are unchanged.
  assert ({k: v for k, v in with_quantiser.items() if k != 'params'}
          == {k: v for k, v in without.items() if k != 'params'})
  assert 'head' in params


@pytest.mark.parametrize('config_module, model_name', [
    (mnist_soft_quant, 'mnist_cnn'),
    (cifar_soft_quant, 'preact_resnet18'),
    (cifar_soft_quant, 'wide_resnet'),
])
def test_one_soft_quant_training_step_trains_model_and_thresholds(config_module, model_name):
  config = config_module.get_config('smoke')
  config.model.name = model_name
  config.model.preact_resnet18.width = 4
  config.optim.schedule = 'constant'  # the cyclic schedule's first learning rate is 0
  validation.validate(config)
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 10)
  tx = train_state.make_optimizer(config.optim, schedule)
  image_shape = datasets.DATASETS[config.data.name].image_shape
  state = train_state.init_state(model, tx, jax.random.key(0), image_shape)
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((8, *image_shape), dtype=np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  step = jax.jit(train.make_train_step(model.apply, soft_quant_method.loss, tx, schedule,
                                       config))
  new_state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(metrics['loss']) and metrics['grad_norm'] > 0
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(new_state.params))
  offsets = new_state.params['soft_quant']['threshold_offsets']
  assert offsets.shape == (config.model.soft_quant.levels,)
  assert np.abs(offsets - state.params['soft_quant']['threshold_offsets']).max() > 0
  assert optax.global_norm(jax.tree.map(jnp.subtract, new_state.params['head'],
                                        state.params['head'])) > 0


def test_training_noise_is_clipped_and_scaled_as_configured():
  x = jnp.full((4, 32, 32, 3), 0.5)
  rng = jax.random.key(0)
  noisy = jax.jit(soft_quant_method.noisy_input, static_argnums=2)
  gaussian = noisy(x, rng, 'gaussian', 0.1, 0.3) - 0.5
  assert float(gaussian.std()) == pytest.approx(0.1, rel=0.05)
  uniform = noisy(x, rng, 'uniform', 0.1, 0.3) - 0.5
  assert float(jnp.abs(uniform).max()) <= 0.3 and float(jnp.abs(uniform).max()) > 0.29
  clipped = noisy(jnp.zeros_like(x), rng, 'gaussian', 1.0, 0.3)
  assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0


@pytest.mark.parametrize('key, value', [
    ('model.soft_quant.levels', 0),
    ('model.soft_quant.levels', -1),
    ('model.soft_quant.temperature', 0.0),
    ('method.soft_quant.noise', 'laplace'),
])
def test_invalid_soft_quant_settings_are_rejected_with_the_key(key, value):
  config = mnist_soft_quant.get_config()
  config.update_from_flattened_dict({key: value})
  with pytest.raises(validation.ConfigError, match=re.escape(f'config.{key} = ')):
    validation.validate(config)


def test_method_soft_quant_names_the_key_that_turns_the_quantiser_on():
  config = mnist_soft_quant.get_config()
  config.model.soft_quant.levels = 0
  with pytest.raises(validation.ConfigError,
                     match=r'config\.model\.soft_quant\.levels.*soft_quant.*levels='):
    validation.validate(config)
  config.method.name = 'standard'
  validation.validate(config)  # levels = 0 is fine without the method
