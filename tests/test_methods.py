"""Training methods (latentadv/methods): each step's contract, the declaration and registry,
and each method's defining property and cost: SLAT's single backward pass, N-FGSM, GradAlign,
TRADES, Backward Smoothing, SLAT-GA, EAE, the single-step regulariser, Free-AT, and the L2
threat model of pgd and fgsm_rs."""

import dataclasses
import functools
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from latentadv import base_config
from latentadv import checkpoint
from latentadv import methods
from latentadv import models
from latentadv import parallel
from latentadv import train
from latentadv import train_state
from latentadv import validation
from latentadv.attacks import norms
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.methods import backward_smoothing
from latentadv.methods import common
from latentadv.methods import eae
from latentadv.methods import fgsm_rs
from latentadv.methods import n_fgsm
from latentadv.methods import single_step_reg
from latentadv.methods import slat
from latentadv.methods import trades

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


def _count_in_jaxpr(jaxpr) -> int:
  """Convolutions in a jaxpr, including nested ones (jit, custom_vjp, ...)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == 'conv_general_dilated'
    for value in eqn.params.values():
      for inner in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(inner, 'jaxpr', inner)
        if hasattr(inner, 'eqns'):
          total += _count_in_jaxpr(inner)
  return total


def _method_convolutions(name: str, model_name: str = 'preact_resnet18') -> int:
  """Convolutions in the parameter gradient of method `name`'s loss on `model_name`."""
  config, model, params, state, batch = _setup(model_name, method=name)
  def loss_of_params(p):
    return methods.METHODS[name].loss(model.apply, p, state, batch, jax.random.key(0),
                                      config.method)[0]
  return _count_in_jaxpr(jax.make_jaxpr(jax.grad(loss_of_params))(params).jaxpr)


def test_slat_costs_exactly_the_convolutions_of_fgsm():
  """SLAT's latent gradients add no convolution: its step has as many as FGSM's.

  Pass 1 of both is one forward and one input-gradient backward; pass 2 one forward and one
  parameter backward. An extra backward pass for the latent gradients would add convolutions.
  """
  fgsm, slat_count, standard = (_method_convolutions(n) for n in ('fgsm', 'slat', 'standard'))
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


# ----------------------------------------- N-FGSM, GradAlign, TRADES, Backward Smoothing, SLAT-GA

def _logits_fn(model, params, state, bn_mode='train'):
  return common.attack_forward(model.apply, params, state, jax.random.key(0), bn_mode)


def test_n_fgsm_perturbation_exceeds_eps_and_is_not_projected():
  config, model, params, state, batch = _setup('mnist_cnn', method='n_fgsm', batch=16)
  eps, cfg = 0.1, config.method.n_fgsm
  config.method.eps = eps
  x, y = batch['image'], batch['label']
  logits_fn = _logits_fn(model, params, state)
  rng = jax.random.key(5)
  noise_rng, _, train_rng = jax.random.split(rng, 3)
  x_adv = jax.jit(lambda x: n_fgsm.training_input(logits_fn, x, y, noise_rng, eps, cfg.k,
                                                  cfg.step))(x)
  delta = np.abs(np.asarray(x_adv - x))
  assert np.asarray(x_adv).min() >= 0 and np.asarray(x_adv).max() <= 1
  assert delta.max() <= (cfg.k + cfg.step) * eps + 1e-6
  assert delta.max() > 2 * eps  # far outside the eps-ball: no projection
  assert (delta > eps + 1e-6).mean() > 0.2
  # The method trains on exactly this input.
  loss, _, _ = _loss('n_fgsm', config, model, params, state, batch, rng)
  expected = jax.jit(lambda x: common.train_on(model.apply, params, state, x, y, train_rng)[0])(
      x_adv)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_cosine_is_one_for_parallel_gradients_and_skips_zero_ones():
  a = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  b = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
  cos = jax.jit(common.mean_cosine)
  assert float(cos(a, 3.0 * a)) == pytest.approx(1.0, abs=1e-6)  # no GradAlign penalty
  assert float(cos(a, -a)) == pytest.approx(-1.0, abs=1e-6)
  per_example = [float(cos(a[i:i + 1], b[i:i + 1])) for i in range(3)]
  assert float(cos(a, b)) == pytest.approx(np.mean(per_example), abs=1e-6)
  with_zero = a.at[1].set(0.0)
  assert float(cos(with_zero, 2.0 * a)) == pytest.approx(1.0, abs=1e-6)
  chex.assert_tree_all_finite(jax.jit(jax.grad(common.mean_cosine))(with_zero, b))


def test_cosine_of_tiny_gradients_is_exact_until_they_are_numerically_zero():
  # Confident examples have input gradients near 1e-19; their squared norms underflow in
  # float32. The cosine and its (scaled) gradient must still be exact, never NaN.
  a = jax.random.normal(jax.random.key(0), (3, 784))
  b = jax.random.normal(jax.random.key(1), (3, 784))
  value_and_grad = jax.jit(jax.value_and_grad(common.mean_cosine, argnums=1))
  reference, reference_grad = value_and_grad(a, b)
  for scale in (1e-10, 1e-18, 3e-19, 1.2e-19):
    value, grad = value_and_grad(a, b.at[1].multiply(scale))
    assert float(value) == pytest.approx(float(reference), rel=1e-5)
    np.testing.assert_allclose(grad[1] * scale, reference_grad[1], rtol=1e-4, atol=1e-9)
  value, grad = value_and_grad(a, b.at[1].multiply(1e-20))  # numerically zero: left out
  assert float(value) == pytest.approx(float(common.mean_cosine(a[::2], b[::2])), rel=1e-5)
  chex.assert_tree_all_finite(grad)


def test_gradalign_adds_a_positive_differentiable_alignment_term_to_the_fgsm_loss():
  config, model, params, state, batch = _setup('mnist_cnn', method='gradalign', batch=16)
  config.method.eps = 0.3
  rng = jax.random.key(2)

  def value_and_grad(name):
    def loss_fn(p):
      loss, metrics, _ = methods.METHODS[name].loss(model.apply, p, state, batch, rng,
                                                    config.method)
      return loss, metrics
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  (fgsm_loss, _), fgsm_grads = value_and_grad('fgsm')
  (loss, metrics), grads = value_and_grad('gradalign')
  # Zero start, step eps: the CE part is FGSM's loss, and the alignment term is positive.
  assert float(metrics['ce']) == pytest.approx(float(fgsm_loss), rel=1e-5)
  assert float(loss) > float(fgsm_loss) + 1e-4
  assert float(loss) == pytest.approx(
      float(metrics['ce'] + config.method.gradalign.lam * (1 - metrics['cos'])), rel=1e-5)
  # Double backprop: the term moves the parameter gradient.
  differences = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, fgsm_grads)
  assert max(jax.tree.leaves(differences)) > 1e-5


def test_trades_is_clean_cross_entropy_when_beta_is_zero():
  config, model, params, state, batch = _setup('mnist_cnn', method='trades', batch=16)
  config.method.trades.steps = 2
  config.method.trades.beta = 0.0
  rng = jax.random.key(3)
  standard_loss, _, _ = _loss('standard', config, model, params, state, batch, rng)
  loss, metrics, _ = _loss('trades', config, model, params, state, batch, rng)
  assert float(loss) == pytest.approx(float(standard_loss), rel=1e-6)
  assert float(metrics['kl']) > 0


def test_trades_inner_maximisation_increases_the_kl_within_the_ball():
  config, model, params, state, batch = _setup('mnist_cnn', method='trades', batch=16)
  eps, cfg = config.method.eps, config.method.trades
  x = batch['image']
  logits_fn = _logits_fn(model, params, state)
  rng = jax.random.key(4)

  @jax.jit
  def kls(x):
    clean = logits_fn(x)
    start = x + cfg.init_std * jax.random.normal(rng, x.shape)  # the attack's start
    x_adv = trades.adversarial_example(logits_fn, x, rng, eps=eps, steps=cfg.steps,
                                       step_size=cfg.step_size, init_std=cfg.init_std)
    return (common.kl_divergence(clean, logits_fn(start)),
            common.kl_divergence(clean, logits_fn(x_adv)), jnp.abs(x_adv - x).max())

  at_start, at_end, largest_step = kls(x)
  assert float(at_end) > 10 * float(at_start)
  assert float(largest_step) <= eps + 1e-6


def test_backward_smoothing_start_decreases_the_kl_to_the_noised_logits():
  config, model, params, state, batch = _setup('mnist_cnn', method='backward_smoothing',
                                               batch=16)
  eps, cfg = config.method.eps, config.method.backward_smoothing
  x = batch['image']
  logits_fn = _logits_fn(model, params, state, 'eval')
  rng = jax.random.key(6)

  @jax.jit
  def kls(x):
    clean = logits_fn(x)
    noised = clean + cfg.gamma * jax.random.uniform(rng, clean.shape, clean.dtype, -1.0, 1.0)
    x_init, x_adv = backward_smoothing.adversarial_example(
        logits_fn, x, rng, eps=eps, step_size=cfg.step * eps, gamma=cfg.gamma)
    return (common.kl_divergence(noised, logits_fn(x)),
            common.kl_divergence(noised, logits_fn(x_init)),
            common.kl_divergence(clean, logits_fn(x_init)),
            common.kl_divergence(clean, logits_fn(x_adv)),
            jnp.abs(x_init - x).max(), jnp.abs(x_adv - norms.project(x_adv, x, eps)).max())

  to_noised_at_x, to_noised_at_init, to_clean_at_init, to_clean_at_adv, init_step, outside = (
      float(v) for v in kls(x))
  assert to_noised_at_init < to_noised_at_x  # the start moves towards the noised logits
  assert init_step == pytest.approx(eps, rel=1e-5)
  assert to_clean_at_adv > to_clean_at_init  # the TRADES step moves away from the clean ones
  assert outside == 0.0


def test_slat_ga_is_slat_when_the_coefficient_is_zero():
  """Loss and BatchNorm state equal SLAT's; the alignment term it would add is positive."""
  config, model, params, state, batch = _setup(method='slat_ga')
  config.method.slat_ga.coeff = 0.0
  rng = jax.random.key(7)
  expected = _loss('slat', config, model, params, state, batch, rng)
  loss, metrics, new_state = _loss('slat_ga', config, model, params, state, batch, rng)
  chex.assert_trees_all_close(loss, expected[0], rtol=1e-5)
  chex.assert_trees_all_close(new_state, expected[2], rtol=1e-5)
  assert -1 < float(metrics['cos']) < 1


# ----------------------------------------------------------------------------------------- EAE

def _features_and_head(batch=64, dim=12, classes=5, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  features = jax.nn.relu(jax.random.normal(keys[0], (batch, dim)))
  head = {'kernel': jax.random.normal(keys[1], (dim, classes)),
          'bias': 0.1 * jax.random.normal(keys[2], (classes,))}
  return features, head


def test_eae_step_reaches_the_linear_heads_boundary_for_seeds_only():
  features, head = _features_and_head()
  logits = eae.head_logits(head, features)
  # Labels: the prediction for 3/4 of the examples (correct), another class for the rest.
  labels = logits.argmax(-1).at[48:].set((logits.argmax(-1)[48:] + 1) % logits.shape[1])
  step, seeds = jax.jit(lambda h: eae.latent_step(head, h, labels, quantile=0.5, overshoot=0.0,
                                                  eps_latent=1e6))(features)
  z, labels_np = np.asarray(logits), np.asarray(labels)
  others = np.where(np.eye(z.shape[1], dtype=bool)[labels_np], -np.inf, z)
  runner_up = others.argmax(-1)
  margin = z[np.arange(len(z)), labels_np] - others.max(-1)  # z_y - z_j
  expected_seeds = (margin > 0) & (margin < np.quantile(margin, 0.5))
  np.testing.assert_array_equal(np.asarray(seeds), expected_seeds)
  assert 5 <= expected_seeds.sum() < (margin > 0).sum()
  assert not np.asarray(step)[~expected_seeds].any()

  moved = np.asarray(eae.head_logits(head, features + step))
  rows = np.flatnonzero(expected_seeds)
  gap = moved[rows, runner_up[rows]] - moved[rows, labels_np[rows]]
  np.testing.assert_allclose(gap, 0.0, atol=1e-4)  # on the boundary z_j = z_y
  assert (margin[rows] > 1e-2).all()  # ... starting clearly off it

  # Overshoot crosses the boundary; the cap bounds the step's L2 norm.
  overshot, _ = eae.latent_step(head, features, labels, quantile=0.5, overshoot=0.1,
                                eps_latent=1e6)
  crossed = np.asarray(eae.head_logits(head, features + overshot))
  assert (crossed[rows, runner_up[rows]] > crossed[rows, labels_np[rows]]).all()
  capped, _ = eae.latent_step(head, features, labels, quantile=0.5, overshoot=0.0,
                              eps_latent=0.05)
  norms = np.linalg.norm(np.asarray(capped)[rows], axis=-1)
  uncapped = np.linalg.norm(np.asarray(step)[rows], axis=-1)
  np.testing.assert_allclose(norms, np.minimum(uncapped, 0.05), rtol=1e-5)
  assert (uncapped > 0.05).any()


def test_eae_spends_no_backward_pass_on_the_example():
  """The latent step is closed-form: the EAE step has exactly standard training's convolutions."""
  standard = _method_convolutions('standard', 'mnist_cnn')
  assert standard > 0
  assert _method_convolutions('eae', 'mnist_cnn') == standard


def test_eae_adds_the_latent_term_to_one_standard_forward_pass():
  """The clean CE is standard training's; the loss adds lam times the seeds' CE at h + r."""
  config, model, params, state, batch = _setup('mnist_cnn', method='eae', batch=16)
  config.method.eae.lam = 0.5
  rng = jax.random.key(2)
  # Seeds need a batch more than half correct (q = 0.5): label 12 of 16 with the predictions.
  logits, _ = jax.jit(lambda x: common.forward(model.apply, params, state, x, rng, train=True))(
      batch['image'])
  batch = {**batch, 'label': batch['label'].at[:12].set(logits.argmax(-1)[:12])}
  standard_loss, _, _ = _loss('standard', config, model, params, state, batch, rng)
  loss, metrics, _ = _loss('eae', config, model, params, state, batch, rng)
  assert float(metrics['ce']) == pytest.approx(float(standard_loss), rel=1e-5)
  assert float(loss) == pytest.approx(float(metrics['ce'] + 0.5 * metrics['latent_ce']),
                                      rel=1e-5)
  assert 0 < float(metrics['seed_fraction']) <= 0.5
  assert float(metrics['latent_ce']) > 0


# ----------------------------------------------------------------------- single-step regulariser

_TERMS = ('logit_pairing', 'random_start_gap', 'linearity')


def _reg_value_and_grad(config, model, params, state, batch, rng, name='single_step_reg'):
  def loss_fn(p):
    loss, metrics, _ = methods.METHODS[name].loss(model.apply, p, state, batch, rng,
                                                  config.method)
    return loss, metrics
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def _mnist_reg_setup():
  config, model, params, state, batch = _setup('mnist_cnn', method='single_step_reg', batch=16)
  config.method.eps = 0.3
  return config, model, params, state, batch


def test_single_step_reg_without_regularisers_is_fgsm():
  config, model, params, state, batch = _mnist_reg_setup()
  for term in _TERMS:
    config.method.single_step_reg[term] = 0.0
  rng = jax.random.key(3)
  (loss, metrics), grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  (fgsm_loss, _), fgsm_grads = _reg_value_and_grad(config, model, params, state, batch, rng,
                                                   name='fgsm')
  assert float(loss) == pytest.approx(float(fgsm_loss), rel=1e-6)
  chex.assert_trees_all_close(grads, fgsm_grads, rtol=1e-5, atol=1e-7)
  assert all(float(metrics[term]) == 0.0 for term in _TERMS)


@pytest.mark.parametrize('term', _TERMS)
def test_each_regulariser_alone_adds_its_weighted_term_and_moves_the_gradient(term):
  config, model, params, state, batch = _mnist_reg_setup()
  for other in _TERMS:
    config.method.single_step_reg[other] = 0.0
  rng = jax.random.key(3)
  (fgsm_loss, _), fgsm_grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  weight = 0.7
  config.method.single_step_reg[term] = weight
  (loss, metrics), grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  assert float(metrics[term]) > 1e-4
  assert all(float(metrics[other]) == 0.0 for other in _TERMS if other != term)
  assert float(metrics['ce']) == pytest.approx(float(fgsm_loss), rel=1e-6)
  assert float(loss) == pytest.approx(float(fgsm_loss + weight * metrics[term]), rel=1e-5)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, fgsm_grads)
  assert max(jax.tree.leaves(moved)) > 1e-5


class _LinearModel(nn.Module):
  """Logits = W x + b on flattened images: CE is smooth in x, curved only through softmax."""

  @nn.compact
  def __call__(self, x, train=False, output='logits'):
    del train, output
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_linearity_term_is_second_order_small_for_a_linear_model():
  """R3 is the remainder of the first-order expansion of CE(W x + b): at most
  0.25 ||W delta||^2 per example (softmax CE's Hessian in the logits has norm <= 1/2), which
  is tiny against the first-order change at a small eps. A wrong inner product or sign fails."""
  config, _, _, _, batch = _setup('mnist_cnn', method='single_step_reg', batch=16)
  eps = 1e-3
  config.method.eps = eps
  model = _LinearModel()
  params = jax.jit(model.init)(jax.random.key(0), batch['image'])['params']
  x, y = batch['image'], batch['label']
  _, metrics, _ = jax.jit(lambda p: single_step_reg.loss(
      model.apply, p, {}, batch, jax.random.key(1), config.method))(params)
  grad = common.input_gradient(lambda x: model.apply({'params': params}, x), x, y)
  delta = jnp.clip(x + eps * jnp.sign(grad), 0, 1) - x
  first_order = np.abs(np.asarray((delta * grad).reshape(16, -1).sum(-1))).mean()
  w_delta = model.apply({'params': params}, delta) - params['Dense_0']['bias']
  bound = 0.25 * float((w_delta ** 2).sum(-1).mean())
  assert 0 < float(metrics['linearity']) <= bound * (1 + 1e-3) + 1e-7
  assert bound < 0.05 * first_order


# ------------------------------------------------------------------------------------ Free-AT

def _free_config(replays=8, crop_padding=0, flip=False):
  config = base_config.apply_preset(base_config.mnist(base_config.get_config('smoke')), 'smoke')
  config.method.name = 'free'
  config.method.free.replays = replays
  config.optim.batch_size = 16
  config.data.crop_padding, config.data.flip = crop_padding, flip
  return config


def _free_step(config, mesh=None, learning_rate=None):
  """(model, jitted train step, initial state with the carry, a fixed batch (16, 28, 28, 1))."""
  model = train_state.build_model(config)
  if learning_rate is not None:
    config.optim.schedule, config.optim.learning_rate = 'constant', learning_rate
  schedule = train_state.learning_rate_schedule(config.optim, 100)
  tx = train_state.make_optimizer(config.optim, schedule)
  shape = datasets.DATASETS[config.data.name].image_shape
  mesh = mesh or parallel.make_mesh(jax.devices()[:1])
  state = jax.device_put(
      train_state.init_state(model, tx, jax.random.key(0), shape,
                           train_state.init_carry(config, shape)), parallel.replicated(mesh))
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS['free'].loss, tx, schedule, config),
      state, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((16, *shape), dtype=np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  return model, step, state, parallel.global_batch(batch, mesh)


def test_free_perturbation_carries_over_between_replays_and_minibatches():
  config = _free_config()
  eps = config.method.eps
  model, step, state, batch = _free_step(config)
  other_batch = {'image': 1.0 - batch['image'], 'label': (batch['label'] + 3) % 10}
  rng = jax.random.key(1)

  @jax.jit
  def loss_and_delta_grad(params, delta, batch):
    """The Free-AT loss at delta and its gradient w.r.t. delta, computed independently."""
    def loss(delta):
      x = jnp.clip(batch['image'] + delta, 0, 1)
      return common.cross_entropy(model.apply({'params': params}, x), batch['label'])
    return jax.value_and_grad(loss)(delta)

  np.testing.assert_array_equal(state.carry['perturbation'], 0.0)
  deltas = [np.zeros(batch['image'].shape, np.float32)]
  for current in (batch, batch, other_batch):  # two replays, then the next minibatch
    expected_loss, grad = loss_and_delta_grad(state.params, state.carry['perturbation'], current)
    state, metrics = step(state, current, rng)
    # Each step starts from the perturbation the previous one left, whatever the batch.
    assert float(metrics['loss']) == pytest.approx(float(expected_loss), rel=1e-5)
    expected = np.clip(deltas[-1] + eps * np.sign(np.asarray(grad)), -eps, eps)
    np.testing.assert_allclose(state.carry['perturbation'], expected, atol=1e-6)
    deltas.append(np.asarray(state.carry['perturbation']))
  assert np.abs(deltas[1]).max() == pytest.approx(eps)
  assert not np.array_equal(deltas[1], deltas[2])


def test_free_step_has_one_backward_pass():
  """Free's step computes weight and perturbation gradients in one backward pass: the only
  convolution beyond standard training's is the input gradient of the first convolution
  (standard training does not need it). A second pass would add at least three."""
  counts = {}
  for name in ('standard', 'free'):
    config = _free_config()
    config.method.name = name
    model = train_state.build_model(config)
    schedule = train_state.learning_rate_schedule(config.optim, 100)
    tx = train_state.make_optimizer(config.optim, schedule)
    shape = datasets.DATASETS[config.data.name].image_shape
    state = train_state.init_state(model, tx, jax.random.key(0), shape,
                                 train_state.init_carry(config, shape))
    step = train.make_train_step(model.apply, methods.METHODS[name].loss, tx, schedule, config)
    batch = {'image': jnp.zeros((16, *shape)), 'label': jnp.zeros(16, jnp.int32)}
    counts[name] = _count_in_jaxpr(jax.make_jaxpr(step)(state, batch, jax.random.key(0)).jaxpr)
  assert counts['standard'] > 0
  assert counts['free'] == counts['standard'] + 1


def test_free_replays_share_one_augmentation_per_minibatch():
  """With eps = 0 and a zero learning rate every replay of a minibatch sees the same augmented
  images (the same loss); the next replay group draws a new augmentation."""
  config = _free_config(replays=3, crop_padding=4, flip=True)
  config.method.eps = 0.0
  _, step, state, batch = _free_step(config, learning_rate=0.0)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert losses[0] == losses[1] == losses[2]
  assert losses[3] == losses[4] == losses[5]
  assert losses[3] != losses[0]


def test_free_one_device_and_eight_devices_take_the_same_steps():
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    _, step, state, batch = _free_step(_free_config(), mesh=parallel.make_mesh(devices))
    for _ in range(3):
      state, metrics = step(state, batch, jax.random.key(1))
    results.append(jax.device_get((state.params, state.carry, metrics)))
  chex.assert_trees_all_close(results[0], results[1], rtol=2e-4, atol=2e-5)


def test_trainer_replays_each_minibatch_and_checkpoints_the_perturbation(tmp_path, monkeypatch):
  config = _free_config(replays=4)
  config.data.source = 'local'
  config.data.dir = os.path.join(DATA_ROOT, 'mnist')
  config.optim.batch_size = 64
  config.train.eval_every_epochs = 0
  served = []
  original_batch = readers.MemoryBatches.batch

  def recording_batch(self, index):
    served.append(index)
    return original_batch(self, index)
  monkeypatch.setattr(readers.MemoryBatches, 'batch', recording_batch)
  results = train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 512 // 64
  assert results['steps'] == config.optim.epochs * steps_per_epoch == 16
  # 16 optimizer steps on 4 minibatches: each read once, in order, and trained on 4 times.
  assert served == [0, 1, 2, 3]

  model = train_state.build_model(config)
  tx = train_state.make_optimizer(config.optim, train_state.learning_rate_schedule(config.optim, 1))
  abstract = jax.eval_shape(lambda rng: train_state.init_state(
      model, tx, rng, (28, 28, 1), train_state.init_carry(config, (28, 28, 1))), jax.random.key(0))
  restored, _ = checkpoint.Checkpoints(str(tmp_path), 1, 1).restore(abstract)
  delta = np.asarray(restored.carry['perturbation'])
  assert delta.shape == (64, 28, 28, 1)
  assert np.abs(delta).max() == pytest.approx(config.method.eps)
  # The evaluator's loader restores a Free-AT checkpoint (carry included) too.
  train_state.restore_variables(str(tmp_path), config)


# ------------------------------------------------------------------------------- L2 threat model

L2_EPS = 1.0  # L2 radius at which PGD fools about 60 % of the briefly trained MLP's points.


@pytest.mark.parametrize('name', ['pgd', 'fgsm_rs'])
def test_l2_training_steps_train_on_points_in_the_l2_ball(mnist_mlp, name):
  """The input of the training pass of methods pgd and fgsm_rs with config.method.norm l2 is
  within the L2 ball (much smaller than the L-inf ball of the same eps) and in [0, 1]."""
  model, variables, x, y = mnist_mlp
  x, y = jnp.asarray(x[:64]), jnp.asarray(y[:64])
  config = base_config.get_config()
  config.method.update(name=name, norm='l2', eps=L2_EPS, attack_bn='eval')
  config.method.pgd.update(steps=3, step_size=L2_EPS / 4)
  validation.validate(config)
  trained_on = []

  def apply_fn(variables, x, train=False, **kwargs):
    if train:  # Only the training pass: the attack passes run in eval mode (attack_bn).
      trained_on.append(x)
    return model.apply(variables, x, train=train, **kwargs)

  methods.METHODS[name].loss(apply_fn, variables['params'], {}, {'image': x, 'label': y},
                             jax.random.key(0), config.method)
  x_adv, = trained_on
  lengths = norms.per_example(x_adv - x, 'l2')
  assert jnp.all(lengths <= L2_EPS + 1e-5) and jnp.median(lengths) > 0.5 * L2_EPS
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))


@pytest.mark.parametrize('key, value, message', [
    ('method.norm', 'l2', 'method slat defines only the L-inf threat model'),
    ('method.norm', 'l1', 'config.method.norm'),
    ('eval.norm', 'l1', 'config.eval.norm'),
])
def test_config_rejects_a_norm_the_method_or_evaluator_does_not_define(key, value, message):
  config = base_config.get_config()  # Method slat.
  section, leaf = key.split('.')
  config[section][leaf] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config)
  config.method.name, config.method.norm, config.eval.norm = 'fgsm_rs', 'l2', 'l2'
  validation.validate(config)
