"""Tests for FAB-T (attacks/fab.py) and its place in the evaluator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import pgd_minimal_eps, random_hyperplane_problems
from latentadv import base_config
from latentadv import evaluate
from latentadv import parallel
from latentadv.attacks import fab
from latentadv.attacks import registry

EPS = 0.1  # Most points of the briefly trained MLP have an adversarial example this close.
N = 64  # Test points.


@pytest.fixture(scope='module')
def mnist(mnist_mlp):
  """(model, variables, logits_fn, x, y): the MLP after 60 Adam steps, N MNIST test points."""
  model, variables, x, y = mnist_mlp
  return (model, variables, jax.jit(functools.partial(model.apply, variables)),
          jnp.asarray(x[:N]), jnp.asarray(y[:N]))


@pytest.fixture(scope='module')
def fab_t(mnist):
  """(x_adv, norm) of AutoAttack's FAB-T (9 targets, 100 steps) on `mnist`'s points."""
  _, _, logits_fn, x, y = mnist
  return jax.jit(functools.partial(fab.fab_targeted, logits_fn, eps=EPS))(
      x, y, jax.random.key(0))


def _reference_projection(t, w, b):
  """project_linf by bisection on the L-inf radius lam, in float64 numpy, point by point."""
  out = np.zeros_like(t)
  for i in range(len(t)):
    gap = w[i] @ t[i] - b[i]
    direction = -np.sign(w[i]) * (1.0 if gap >= 0 else -1.0)
    room = np.where(direction > 0, 1 - t[i], t[i])
    lo, hi = 0.0, room.max()  # The reach |w| @ min(lam, room) grows with lam.
    if np.abs(w[i]) @ room >= abs(gap):
      for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.abs(w[i]) @ np.minimum(mid, room) >= abs(gap) else (mid, hi)
    out[i] = direction * np.minimum(hi, room)
  return out


def test_projection_is_the_minimal_linf_step_to_the_hyperplane_in_the_box():
  t, w, b = random_hyperplane_problems((0.5, 3))
  d = np.asarray(fab.project_linf(*map(jnp.asarray, (t, w, b))), np.float64)
  expected = _reference_projection(t, w, b)
  np.testing.assert_allclose(d, expected, atol=1e-5)
  assert np.all((t + d >= -1e-6) & (t + d <= 1 + 1e-6))
  on_plane = np.abs(np.sum(w * (t + d), axis=1) - b) < 1e-4
  moved = t + expected
  corner = np.all((w == 0) | np.isclose(moved, 0) | np.isclose(moved, 1), axis=1)
  assert 0 < corner.sum() < 40 and np.all(on_plane | corner)  # Both cases are exercised.
  np.testing.assert_array_equal(d[w == 0], 0)


def test_fab_finds_the_minimal_perturbation_of_a_linear_model():
  # logits (0, g(x)), g linear: class 1 is reachable at L-inf distance |g(x)| / |w|_1 exactly
  # when the box does not bind (x near 0.5, distances below 0.1).
  w = jax.random.normal(jax.random.key(0), (64,))
  x = 0.5 + 0.1 * jax.random.uniform(jax.random.key(1), (16, 8, 8, 1), minval=-1)

  def logits_fn(x):
    g = (x.reshape(x.shape[0], -1) - 0.5) @ w - 1.0
    return jnp.stack([jnp.zeros_like(g), g], axis=-1)

  g = logits_fn(x)[:, 1]
  distance = -g / jnp.abs(w).sum()
  assert jnp.all((g < 0) & (distance < 0.1))
  y = jnp.zeros(16, jnp.int32)
  x_adv, norm = jax.jit(functools.partial(fab.fab_targeted_run, logits_fn, eps=0.3, steps=20,
                                          unroll=False))(x, y, jax.random.key(2), 0)
  assert jnp.all(logits_fn(x_adv).argmax(-1) == 1)
  np.testing.assert_allclose(norm, fab.linf_norm(x_adv - x))
  assert jnp.all(norm >= distance * (1 - 1e-4))  # None closer than the boundary exists.
  assert jnp.all(norm <= distance * 1.01)


def test_adversarial_points_are_valid(mnist, fab_t):
  _, _, logits_fn, x, y = mnist
  x_adv, norm = fab_t
  found = np.isfinite(norm)
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  np.testing.assert_allclose(norm[found], fab.linf_norm(x_adv - x)[found], rtol=1e-6)
  assert np.all(logits_fn(x_adv).argmax(-1)[found] != y[found])
  np.testing.assert_array_equal(x_adv[~found], x[~found])
  clean_wrong = logits_fn(x).argmax(-1) != y
  np.testing.assert_array_equal(norm[clean_wrong], 0)
  # Counted as fooled at eps exactly when found within eps (and misclassified, above).
  assert 0 < (norm <= EPS).sum() < (norm < np.inf).sum()
  np.testing.assert_array_equal(fab.fooled_within(logits_fn, x, y, x_adv, EPS), norm <= EPS)


def test_fools_an_undefended_model_at_small_eps(mnist, fab_t):
  _, _, logits_fn, x, y = mnist
  correct = np.asarray(logits_fn(x).argmax(-1) == y)
  norm = np.asarray(fab_t[1])
  assert correct.mean() > 0.8
  assert (norm[correct] <= EPS).mean() > 0.75


def test_minimal_norm_matches_a_pgd_bisection(mnist, fab_t):
  """The median minimal norm of FAB-T is within 10 % of the smallest eps (8 bisection steps
  in [0, 0.25]) at which PGD-100 (step eps / 10, any iterate) fools each point."""
  _, _, logits_fn, x, y = mnist
  correct = np.asarray(logits_fn(x).argmax(-1) == y)

  pgd_eps = pgd_minimal_eps(logits_fn, x, y, 'linf', upper=0.25)
  assert (pgd_eps[correct] < 0.25).mean() > 0.95
  pgd_median = np.median(pgd_eps[correct])
  fab_median = np.median(np.asarray(fab_t[1])[correct])
  assert fab_median <= 1.10 * pgd_median, (fab_median, pgd_median)


def test_evaluator_counts_only_points_fooled_within_eps(mnist):
  model, variables, _, x, y = mnist
  assert registry.SUITES['autoattack'] == ('apgd-ce', 'apgd-t', 'fab-t', 'square')
  eval_config = base_config.get_config('smoke').eval
  eval_config.fab.update(targets=2, restarts=2)
  attacks = registry.build_suite('fab-t', eval_config, EPS)
  assert attacks[0].runs == 4
  evaluator = evaluate.Evaluator(model.apply, parallel.make_mesh(jax.devices()[:1]), attacks,
                                 eps=EPS, batch_size=64)
  record, examples = evaluator.evaluate(variables, np.asarray(x), np.asarray(y),
                                        jax.random.key(0))
  fooled, norm, correct = examples['fooled_by_fab-t'], examples['fab_linf_norm'], examples[
      'correct']
  assert norm.shape == (N,) and np.all(np.isinf(norm[~correct]))  # Not attacked.
  np.testing.assert_array_equal(fooled, correct & (norm <= EPS))
  np.testing.assert_array_equal(examples['robust'], correct & ~fooled)
  assert record['fab-t_accuracy'] < record['clean_accuracy'] - 0.3
  assert np.any(correct & ~fooled & np.isfinite(norm))  # Found farther out, not counted.
  settings = record['attacks']['fab-t']
  assert (settings['steps'], settings['targets'], settings['restarts']) == (5, 2, 2)
