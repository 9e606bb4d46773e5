"""Mixed precision: bfloat16 compute with float32 params, outputs, perturbations and updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentadv import base_config
from latentadv import methods
from latentadv import models
from latentadv import parallel
from latentadv import train_state
from latentadv import train
from latentadv import validation

# name -> (tiny options, input shape (B, H, W, C)).
CASES = {
    'mnist_cnn': ({}, (4, 28, 28, 1)),
    'preact_resnet18': ({'width': 8}, (4, 16, 16, 3)),
    'wide_resnet': ({'depth': 10, 'widen_factor': 1, 'dropout': 0.0}, (4, 16, 16, 3)),
}


def _model(name, dtype):
  options, shape = CASES[name]
  model = models.create_model(name, options, num_classes=10, mean=(0.4,) * shape[-1],
                              std=(0.2,) * shape[-1], dtype=dtype)
  return model, shape


def _dtypes(tree):
  return {leaf.dtype for leaf in jax.tree.leaves(tree)}


@pytest.mark.parametrize('name', sorted(CASES))
def test_bfloat16_model_has_float32_params_and_outputs_close_to_float32(name):
  model32, shape = _model(name, 'float32')
  model16, _ = _model(name, 'bfloat16')
  rng = jax.random.key(0, impl='rbg')
  variables = models.init_variables(model32, rng, shape)
  variables16 = jax.eval_shape(lambda: models.init_variables(model16, rng, shape))
  assert jax.tree.structure(variables16) == jax.tree.structure(variables)
  assert _dtypes(variables16) == {jnp.dtype(jnp.float32)}

  x = jax.random.uniform(jax.random.key(1), shape)
  logits32, logits16, features16, updates16 = jax.jit(lambda v, x: (
      model32.apply(v, x), model16.apply(v, x), model16.apply(v, x, output='features'),
      model16.apply(v, x, train=True, mutable=['batch_stats'])[1]))(variables, x)
  assert logits16.dtype == features16.dtype == jnp.float32
  # Train-mode BatchNorm statistics stay float32 (the MNIST CNN has none).
  assert _dtypes(updates16) == _dtypes(variables.get('batch_stats', {}))
  assert _dtypes(updates16) <= {jnp.dtype(jnp.float32)}
  scale = float(jnp.abs(logits32).max())
  difference = float(jnp.abs(logits16 - logits32).max())
  assert 0 < difference < 0.03 * scale  # bfloat16 keeps about 3 significant digits.


def test_bfloat16_taps_and_input_gradients_are_float32():
  model, shape = _model('mnist_cnn', 'bfloat16')
  variables = models.init_variables(model, jax.random.key(0, impl='rbg'), shape)
  tap_shapes = models.tap_shapes(model.apply, variables, shape)
  assert {s.dtype for s in tap_shapes.values()} == {jnp.dtype(jnp.float32)}
  deltas = {name: jnp.full(s.shape, 0.01, s.dtype) for name, s in tap_shapes.items()}

  def loss(x, deltas):
    return model.apply({**variables, models.COLLECTION: deltas}, x).sum()
  x = jax.random.uniform(jax.random.key(1), shape)
  grad_x, grad_deltas = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, deltas)
  assert grad_x.dtype == jnp.float32 and _dtypes(grad_deltas) == {jnp.dtype(jnp.float32)}
  assert float(jnp.abs(grad_x).max()) > 0


def test_one_bfloat16_slat_step_keeps_float32_state():
  config = base_config.apply_preset(base_config.mnist(base_config.get_config()), 'smoke')
  config.model.dtype = 'bfloat16'
  config.optim.schedule = 'constant'
  config.optim.batch_size = 8
  validation.validate(config)
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 100)
  tx = train_state.make_optimizer(config.optim, schedule)
  mesh = parallel.make_mesh(jax.devices()[:1])
  initial = jax.device_put(train_state.init_state(model, tx, jax.random.key(0), (28, 28, 1)),
                           parallel.replicated(mesh))
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS['slat'].loss, tx, schedule, config),
      initial, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((8, 28, 28, 1), dtype=np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  before = jax.device_get(initial.params)
  state, metrics = step(initial, parallel.global_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  float_leaves = jax.tree.leaves((state.params, state.model_state, state.opt_state))
  assert {leaf.dtype for leaf in float_leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
      jnp.dtype(jnp.float32)}
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(before),
                                              jax.tree.leaves(jax.device_get(state.params))))


def test_unknown_dtype_is_rejected_with_the_key():
  config = base_config.get_config()
  config.model.dtype = 'float16'
  with pytest.raises(validation.ConfigError, match=r'config\.model\.dtype'):
    validation.validate(config)
