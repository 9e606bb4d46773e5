"""Tests for the strong evaluation attacks (APGD, APGD-T, Square) and the DLR losses."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentadv.attacks import apgd
from latentadv.attacks import losses
from latentadv.attacks import pgd
from latentadv.attacks import square

EPS = 0.06  # Small enough that PGD leaves an undefended MNIST MLP partly robust.
STEPS = 5  # Few enough that PGD-5 and APGD-5 differ on that MLP.


@pytest.fixture(scope='module')
def mnist(mnist_mlp):
  """Returns (logits_fn, x, y): an MLP trained for 60 Adam steps, 256 MNIST test points."""
  model, params, x, y = mnist_mlp
  return jax.jit(functools.partial(model.apply, params)), jnp.asarray(x[:256]), y[:256]


def _gradient_free(logits_fn):
  """logits_fn, but differentiating it raises."""
  @jax.custom_vjp
  def wrapped(x):
    return logits_fn(x)

  def bwd(residuals, cotangent):
    raise AssertionError('The attack took a gradient.')

  wrapped.defvjp(lambda x: (logits_fn(x), None), bwd)
  return wrapped


ATTACKS = {
    'apgd_ce': functools.partial(apgd.apgd, eps=EPS, steps=STEPS),
    'apgd_dlr': functools.partial(apgd.apgd, eps=EPS, steps=20, loss='dlr', unroll=False),
    'apgd_t': functools.partial(apgd.apgd_targeted, eps=EPS, steps=5, num_targets=3),
    'square': functools.partial(square.square, eps=EPS, n_queries=200),
}


@pytest.fixture(scope='module')
def attacked(mnist):
  """Jitted attacks, and their results on `mnist` with rng key 5: {name: (fn, x_adv, fooled)}."""
  logits_fn, x, y = mnist
  results = {}
  for name, attack in ATTACKS.items():
    fn = jax.jit(functools.partial(attack, logits_fn))
    results[name] = (fn, *fn(x, y, jax.random.key(5)))
  return results


def test_dlr_hand_example():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0], [4.0, 0.0, 1.0, 3.0]])
  labels = jnp.array([0, 1, 0])
  # Sorted logits 3 2 1 0 / 3 2 1 0 / 4 3 1 0: margins 2, -1, -1 over z_pi1 - z_pi3 = 2, 2, 3.
  chex.assert_trees_all_close(losses.dlr(logits, labels), jnp.array([1.0, -0.5, -1 / 3]))
  # Target logit minus true logit over z_pi1 - (z_pi3 + z_pi4) / 2 = 2.5, 2.5, 3.5.
  chex.assert_trees_all_close(losses.targeted_dlr(logits, labels, jnp.array([3, 2, 1])),
                              jnp.array([-0.4, -0.4, -4 / 3.5]))
  chex.assert_trees_all_close(losses.dlr(5 * logits - 7, labels), losses.dlr(logits, labels),
                              rtol=1e-6)
  assert losses.LOSSES['dlr'] is losses.dlr


def test_apgd_checkpoints_follow_the_paper():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  intervals = apgd._checkpoint_intervals(100)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.flatnonzero(intervals), [22, 41, 57, 70, 80, 87, 93, 99])
  np.testing.assert_array_equal(intervals[np.flatnonzero(intervals)], [22, 19, 16, 13, 10, 7, 6, 6])


def test_apgd_halves_its_step_and_returns_the_best_point():
  # CE grows with -(x - 0.5)^2: a step of 2 eps = 0.6 overshoots the maximiser 0.5 (or the
  # ball's edge 0.4 for x = 0.1); only halving the step and restarting from the best gets near.
  def logits_fn(x):
    z = x.reshape(-1)
    return jnp.stack([jnp.zeros_like(z), -(z - 0.5) ** 2], axis=-1)

  x, y = jnp.array([0.3, 0.1, 0.45]).reshape(3, 1, 1, 1), jnp.zeros(3, jnp.int32)
  x_adv, fooled = apgd.apgd(logits_fn, x, y, jax.random.key(0), eps=0.3, unroll=False)
  np.testing.assert_allclose(x_adv.reshape(-1), [0.5, 0.4, 0.5], atol=2e-3)
  assert not fooled.any()


@pytest.mark.parametrize('name', ATTACKS)
def test_attack_stays_in_ball_and_fooled_points_are_adversarial(mnist, attacked, name):
  logits_fn, x, y = mnist
  _, x_adv, fooled = attacked[name]
  chex.assert_equal_shape([x_adv, x])
  chex.assert_shape(fooled, y.shape)
  assert jnp.all(jnp.abs(x_adv - x) <= EPS + 1e-6)
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  np.testing.assert_array_equal(fooled, logits_fn(x_adv).argmax(-1) != y)
  assert 0 < fooled.mean() < 1


@pytest.mark.parametrize('name', ATTACKS)
def test_attack_is_deterministic(mnist, attacked, name):
  _, x, y = mnist
  fn, x_adv, fooled = attacked[name]
  x_again, fooled_again = fn(x, y, jax.random.key(5))
  np.testing.assert_array_equal(x_again, x_adv)
  np.testing.assert_array_equal(fooled_again, fooled)
  assert jnp.any(fn(x, y, jax.random.key(6))[0] != x_adv)


def test_apgd_targeted_is_its_runs_combined(mnist, attacked):
  logits_fn, x, y = mnist
  _, x_adv, fooled = attacked['apgd_t']
  run = jax.jit(functools.partial(apgd.apgd_targeted_run, logits_fn, eps=EPS, steps=5,
                                  unroll=False))
  x_expected, fooled_expected = x, jnp.zeros_like(fooled)
  for t in range(3):
    x_run, fooled_run = run(x, y, jax.random.fold_in(jax.random.key(5), t), t)
    x_expected = jnp.where(fooled_expected[:, None, None, None], x_expected, x_run)
    fooled_expected |= fooled_run
  np.testing.assert_array_equal(fooled, fooled_expected)
  np.testing.assert_allclose(x_adv, x_expected, atol=1e-6)


def test_apgd_at_least_as_strong_as_pgd(mnist, attacked):
  logits_fn, x, y = mnist
  clean = logits_fn(x).argmax(-1) == y
  pgd_robust = jax.jit(functools.partial(
      pgd.pgd_robust, logits_fn, eps=EPS, step_size=EPS / 4, steps=STEPS, restarts=1))
  robust_pgd = pgd_robust(x, y, jax.random.key(5))
  robust_apgd = clean & ~attacked['apgd_ce'][2]
  assert 0.2 < robust_pgd.mean() < clean.mean() - 0.2  # PGD neither fails nor saturates.
  assert robust_apgd.sum() <= robust_pgd.sum()
  robust_all = robust_apgd & ~attacked['apgd_dlr'][2] & ~attacked['apgd_t'][2]
  assert robust_all.sum() < robust_apgd.sum()  # The DLR runs fool examples APGD-CE missed.


def test_square_fools_undefended_model_without_gradients(mnist):
  logits_fn, x, y = mnist
  logits_fn = _gradient_free(logits_fn)
  with pytest.raises(AssertionError, match='took a gradient'):
    jax.grad(lambda x: logits_fn(x).sum())(x[:1])
  clean = logits_fn(x).argmax(-1) == y
  x_adv, fooled = jax.jit(functools.partial(square.square, logits_fn, eps=0.15,
                                            n_queries=300))(x, y, jax.random.key(0))
  # Every pixel sits on a vertex of the eps-ball, unless clipped to [0, 1].
  assert jnp.all(jnp.isclose(jnp.abs(x_adv - x), 0.15) | (x_adv == 0) | (x_adv == 1))
  assert (fooled & clean).sum() > 0.8 * clean.sum()
