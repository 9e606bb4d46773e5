"""Training methods: each step's contract, and SLAT's single backward pass."""

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from latentadv import base_config
from latentadv import methods
from latentadv import models
from latentadv import train
from latentadv import validation
from latentadv.methods import common
from latentadv.methods import fgsm_rs
from latentadv.methods import slat

from conftest import DATA_ROOT


def _setup(model_name='preact_resnet18', method='standard', batch=4):
  """(config, model, params, model_state, batch); the model part is built once per shape."""
  config = base_config.get_config()
  config.method.name = method
  return (config, *_model_and_batch(model_name, batch))


@functools.cache
def _model_and_batch(model_name, batch):
  options = {'preact_resnet18': {'width': 4}, 'mnist_cnn': {}}[model_name]
  shape = (batch, 32, 32, 3) if model_name == 'preact_resnet18' else (batch, 28, 28, 1)
  channels = shape[-1]
  model = models.create_model(model_name, options, num_classes=10, mean=(0.5,) * channels,
                              std=(0.25,) * channels)
  variables = dict(models.init_variables(model, jax.random.key(0), shape))
  params = variables.pop('params')
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.random(shape, dtype=np.float32)),
           'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
  return model, params, variables, batch


def _loss(name, config, model, params, state, batch, rng):
  """The jitted loss of method `name`: (loss, metrics, new model state)."""
  return jax.jit(lambda p, s, b, r: methods.METHODS[name].loss(model.apply, p, s, b, r,
                                                               config.method))(
                                                                   params, state, batch, rng)


@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_each_method_returns_finite_loss_gradients_metrics_and_state(name):
  config, model, params, state, batch = _setup(method=name)

  def loss_fn(params):
    loss, metrics, new_state = methods.METHODS[name].loss(model.apply, params, state, batch,
                                                          jax.random.key(1), config.method)
    return loss, (metrics, new_state)
  (loss, (metrics, new_state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  assert np.isfinite(loss)
  assert set(metrics) >= {'loss', 'accuracy'}
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  # Train-mode BatchNorm of the training pass moves the running statistics.
  assert any(not np.allclose(a, b)
             for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
  chex.assert_tree_all_finite(grads)
  assert optax.global_norm(grads) > 0


@pytest.mark.parametrize('name', ['fgsm', 'fgsm_rs', 'pgd', 'slat'])
def test_adversarial_methods_raise_the_training_loss(name):
  config, model, params, state, batch = _setup('mnist_cnn', method=name, batch=16)
  config.method.eps = 0.3
  standard_loss, _, _ = _loss('standard', config, model, params, state, batch,
                              jax.random.key(1))
  loss, _, _ = _loss(name, config, model, params, state, batch, jax.random.key(1))
  assert loss > standard_loss + 1e-3


@pytest.mark.parametrize('clip_start', [True, False])
def test_fgsm_rs_on_black_pixels_follows_the_clip_start_choice(clip_start):
  config, model, params, state, batch = _setup('mnist_cnn', method='fgsm_rs', batch=16)
  config.method.eps = eps = 0.3
  config.method.fgsm_rs.clip_start = clip_start
  black = jnp.zeros_like(batch['image'])
  x_adv = jax.jit(lambda x: fgsm_rs.perturb(model.apply, params, state, x, batch['label'],
                                            jax.random.key(0), config.method))(black)
  values = np.asarray(x_adv).ravel()
  moved = values[values > 0]
  assert values.min() == 0.0 and values.max() == pytest.approx(eps)
  assert 0.2 < moved.size / values.size < 0.8  # the gradient's sign varies over pixels
  if clip_start:  # start clipped to [0, eps], then + 1.25 eps: always the full eps
    np.testing.assert_allclose(moved, eps)
  else:  # authors' MNIST code: start in [-eps, eps], + 1.25 eps, clipped: [0.25 eps, eps]
    assert moved.min() >= 0.25 * eps - 1e-6
    assert np.mean(moved < 0.99 * eps) > 0.3


@pytest.mark.parametrize('name', ['fgsm', 'slat'])
def test_zero_radius_is_standard_training_including_batchnorm_state(name):
  """With eps = eps_h = 0 the perturbation passes must leave no trace: not even in BN stats."""
  config, model, params, state, batch = _setup(method=name)
  config.method.eps = 0.0
  config.method.slat.eps_h = 0.0
  rng = jax.random.key(3)
  expected = _loss('standard', config, model, params, state, batch, rng)
  got = _loss(name, config, model, params, state, batch, rng)
  chex.assert_trees_all_close(got[0], expected[0], rtol=1e-5)
  chex.assert_trees_all_close(got[2], expected[2], rtol=1e-5)


def test_slat_clean_pass_updates_batchnorm_only_when_asked():
  """Default: pass 1 leaves the running averages alone (zero radius = standard training, above).
  clean_pass_updates_bn: the clean batch's update comes first, then pass 2's, as in PyTorch."""
  config, model, params, state, batch = _setup(method='slat')
  config.method.eps = 0.0
  config.method.slat.eps_h = 0.0
  config.method.slat.clean_pass_updates_bn = True
  rng = jax.random.key(3)
  loss, _, new_state = _loss('slat', config, model, params, state, batch, rng)
  standard_loss, _, once = _loss('standard', config, model, params, state, batch, rng)
  chex.assert_trees_all_close(loss, standard_loss, rtol=1e-5)  # same batch statistics
  _, _, twice = _loss('standard', config, model, params, once, batch, rng)
  chex.assert_trees_all_close(new_state, twice, rtol=1e-5)  # two momentum updates, not one
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(twice),
                                                    jax.tree.leaves(once)))


def test_slat_gradients_equal_separately_computed_gradients():
  config, model, params, state, batch = _setup()
  x, y = batch['image'], batch['label']
  logits_fn = common.attack_forward(model.apply, params, state, jax.random.key(0), 'train')
  zeros = slat.zero_perturbations(model.apply, {'params': params, **state}, x, config.method.slat.taps)
  grad_x, grad_latent, _ = jax.jit(lambda x, z: slat.input_and_latent_gradients(
      lambda x, d: (logits_fn(x, d), state), x, y, z))(x, zeros)
  separate_x = jax.jit(lambda x: common.input_gradient(logits_fn, x, y))(x)
  chex.assert_trees_all_close(grad_x, separate_x, atol=1e-6)
  assert set(grad_latent) == {'stem', 'stage1'}
  for name in grad_latent:
    def loss_of_one_tap(delta, name=name):
      return common.cross_entropy(logits_fn(x, {name: delta}), y) * len(y)
    separate = jax.jit(jax.grad(loss_of_one_tap))(zeros[name])
    chex.assert_trees_all_close(grad_latent[name], separate, atol=1e-6)
    assert np.abs(separate).max() > 0


def _count_convolutions(name):
  """Convolutions in the jaxpr of the full training gradient of method `name`."""
  config, model, params, state, batch = _setup(method=name)
  def loss_of_params(p):
    return methods.METHODS[name].loss(model.apply, p, state, batch, jax.random.key(0),
                                      config.method)[0]
  jaxpr = jax.make_jaxpr(jax.grad(loss_of_params))(params)

  def count(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      total += eqn.primitive.name == 'conv_general_dilated'
      for value in eqn.params.values():
        for inner in value if isinstance(value, (list, tuple)) else [value]:
          inner = getattr(inner, 'jaxpr', inner)  # ClosedJaxpr -> Jaxpr
          if hasattr(inner, 'eqns'):
            total += count(inner)
    return total
  return count(jaxpr.jaxpr)


def test_slat_costs_exactly_the_convolutions_of_fgsm():
  """SLAT's latent gradients add no convolution: its step has as many as FGSM's.

  Pass 1 of both is one forward and one input-gradient backward; pass 2 one forward and one
  parameter backward. An extra backward pass for the latent gradients would add convolutions.
  """
  fgsm, slat_count, standard = (_count_convolutions(n) for n in ('fgsm', 'slat', 'standard'))
  assert standard > 0
  assert slat_count == fgsm
  assert fgsm > standard


def test_slat_trains_on_input_and_latent_perturbations_of_the_configured_size():
  """The SLAT loss equals the train-mode CE at the documented perturbations, and each part
  matters: dropping the latent perturbation, or shrinking it, changes the loss."""
  config, model, params, state, batch = _setup(method='slat')
  eps, cfg = config.method.eps, config.method.slat
  x, y = batch['image'], batch['label']
  rng = jax.random.key(4)
  attack_rng, train_rng = jax.random.split(rng)

  @jax.jit
  def reference_losses(params):
    logits_fn = common.attack_forward(model.apply, params, state, attack_rng, 'train')
    zeros = slat.zero_perturbations(model.apply, {'params': params, **state}, x, cfg.taps)
    grad_x, grad_latent, _ = slat.input_and_latent_gradients(
        lambda x, d: (logits_fn(x, d), state), x, y, zeros)
    x_adv = jnp.clip(x + cfg.alpha * eps * jnp.sign(grad_x), 0, 1)
    latent = {k: slat.latent_radius(config.method) * jnp.sign(g) for k, g in grad_latent.items()}
    def train_loss(x, perturbations):
      return common.train_on(model.apply, params, state, x, y, train_rng, perturbations)[0]
    halved = {k: v / 2 for k, v in latent.items()}
    return (train_loss(x_adv, latent), train_loss(x_adv, None), train_loss(x_adv, halved),
            jnp.abs(x_adv - x).max())

  full, input_only, half_latent, largest_input_step = reference_losses(params)
  loss, _, _ = _loss('slat', config, model, params, state, batch, rng)
  assert float(largest_input_step) == pytest.approx(cfg.alpha * eps, rel=1e-5)
  assert float(loss) == pytest.approx(float(full), rel=1e-5)
  assert abs(float(full) - float(input_only)) > 1e-4
  assert abs(float(full) - float(half_latent)) > 1e-5


def test_slat_rejects_unknown_taps():
  config, model, params, state, batch = _setup()
  with pytest.raises(ValueError, match='stage9'):
    slat.zero_perturbations(model.apply, {'params': params, **state}, batch['image'],
                            ('stem', 'stage9'))


@pytest.mark.parametrize('eps, eps_h, expected', [(16 / 255, None, 16 / 255),
                                                  (16 / 255, 8 / 255, 8 / 255)])
def test_slat_latent_radius_is_eps_unless_set(eps, eps_h, expected):
  """As the reference code's one radius for the input and the taps: eps_h = eps by default."""
  config, model, params, state, batch = _setup(method='slat')
  config.method.eps, config.method.slat.eps_h = eps, eps_h
  assert slat.latent_radius(config.method) == expected
  _, deltas, _, _ = jax.jit(lambda p: slat.perturb(model.apply, p, state, batch['image'],
                                                   batch['label'], jax.random.key(0),
                                                   config.method))(params)
  for delta in deltas.values():
    np.testing.assert_allclose(np.abs(np.asarray(delta)).max(), expected, rtol=1e-6)


def test_slat_feature_std_radius_is_eps_h_times_the_channel_std_over_the_reference():
  """eps_h_scale='feature_std': the latent step at channel c of a tap is
  eps_h * std_c / reference_feature_std, std_c that of the clean feature map (train-mode BN,
  as pass 1 runs by default) over the batch and spatial positions."""
  config, model, params, state, batch = _setup(method='slat')
  cfg = config.method.slat
  cfg.eps_h_scale, cfg.reference_feature_std = 'feature_std', 0.4
  _, deltas, _, _ = jax.jit(lambda p: slat.perturb(model.apply, p, state, batch['image'],
                                                   batch['label'], jax.random.key(0),
                                                   config.method))(params)
  _, captured = model.apply({'params': params, **state}, batch['image'], train=True,
                            capture_intermediates=True, mutable=['batch_stats', 'intermediates'])
  producers = {'stem': 'stem_conv', 'stage1': 'stage1_block2'}  # models/preact_resnet.py
  for tap, producer in producers.items():
    std = np.asarray(captured['intermediates'][producer]['__call__'][0]).std(axis=(0, 1, 2))
    expected = slat.latent_radius(config.method) * std / 0.4
    np.testing.assert_allclose(np.abs(np.asarray(deltas[tap])).max(axis=(0, 1, 2)), expected,
                               rtol=1e-4)
    assert expected.max() / expected.min() > 1.05  # the channels' radii really differ


def _noise_loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at batch['image'] (B, H, W, C) plus uniform noise of radius scale * eps."""
  noise_rng, train_rng = jax.random.split(rng)
  x, radius = batch['image'], config.noise.scale * config.eps
  x = jnp.clip(x + jax.random.uniform(noise_rng, x.shape, x.dtype, -radius, radius), 0.0, 1.0)
  return common.train_on(apply_fn, params, model_state, x, batch['label'], train_rng)


def _noise_check(config, require):
  scale = config.method.noise.scale
  require(scale <= 1, 'method.noise.scale', scale, 'a fraction of eps in [0, 1]')


# The toy method of docs/adding_a_method.md.
NOISE = methods.Method(name='noise', loss=_noise_loss,
                       default_config=lambda: ml_collections.ConfigDict(dict(scale=0.5)),
                       check=_noise_check)


@pytest.fixture
def registry(monkeypatch):
  """methods.METHODS as it is, restored after the test (which may register methods)."""
  monkeypatch.setattr(methods, 'METHODS', dict(methods.METHODS))
  return methods.METHODS


def _noise_recipe(preset='smoke'):
  """What configs/mnist_noise.py would return, on the local MNIST files."""
  config = base_config.set_method(base_config.mnist(base_config.get_config()), 'noise')
  config.data.source, config.data.dir = 'local', os.path.join(DATA_ROOT, 'mnist')
  return base_config.apply_preset(config, preset)


def test_a_method_registered_through_the_public_api_trains_on_the_smoke_preset(registry,
                                                                               tmp_path):
  assert methods.register(NOISE) is NOISE and registry['noise'] is NOISE
  config = _noise_recipe()
  assert config.method.noise.scale == 0.5 and config.train.collapse_monitor_examples == 0
  config.optim.epochs, config.train.eval_every_epochs = 1, 0
  config.eval.n_examples, config.eval.pgd.steps, config.eval.pgd.restarts = 64, 2, 1
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['method'] == 'noise' and results['steps'] == 512 // 64
  assert np.isfinite(results['history'][-1]['train_loss'])
  assert results['final']['n_examples'] == 64
  config.method.noise.scale = 2.0
  with pytest.raises(validation.ConfigError, match=r'config\.method\.noise\.scale = 2\.0'):
    validation.validate(config)


def test_the_declaration_sets_the_recipes_collapse_monitor(registry):
  methods.register(dataclasses.replace(NOISE, single_step=True))
  assert _noise_recipe().train.collapse_monitor_examples == (
      base_config.COLLAPSE_MONITOR_EXAMPLES['smoke'])
  assert _noise_recipe('').train.collapse_monitor_examples == (
      base_config.COLLAPSE_MONITOR_EXAMPLES[''])
  for name, method in registry.items():
    config = base_config.set_method(base_config.get_config(), name)
    assert bool(config.train.collapse_monitor_examples) == method.single_step, name


@pytest.mark.parametrize('name', ['standard', 'eps', 'not-an-identifier'])
def test_register_rejects_a_name_that_is_taken_or_unusable(registry, name):
  with pytest.raises(ValueError, match=repr(name)):
    methods.register(dataclasses.replace(NOISE, name=name))
  assert registry['standard'] is methods.standard.METHOD


def test_the_trainer_reads_carry_and_replays_from_the_declaration():
  config = base_config.set_method(base_config.get_config(), 'free')
  config.method.free.replays = 3
  assert train.minibatch_replays(config) == 3
  assert train.minibatch_replays(base_config.set_method(config, 'standard')) == 1
  free = methods.METHODS['free']
  carry = free.init_carry((2, 4, 4, 1), config.method)
  chex.assert_shape(carry['perturbation'], (2, 4, 4, 1))
  grad = {'perturbation': jnp.ones((2, 4, 4, 1))}
  stepped = free.update_carry(carry, grad, config.method)
  np.testing.assert_allclose(stepped['perturbation'], config.method.eps)
  assert methods.METHODS['standard'].init_carry((2, 4, 4, 1), config.method) == {}
  assert methods.METHODS['standard'].update_carry({}, {}, config.method) == {}
