"""N-FGSM, GradAlign, TRADES, Backward Smoothing and SLAT-GA: each method's defining property.

Every method also runs through the contract test of test_methods.py (it iterates the registry).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentadv import methods
from latentadv.attacks import norms
from latentadv.methods import backward_smoothing
from latentadv.methods import common
from latentadv.methods import n_fgsm
from latentadv.methods import trades
from test_methods import _loss, _setup


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
