"""The attacks (latentadv/attacks) on tiny models and an MNIST MLP: their losses, PGD, APGD,
APGD-T, Square and FAB-T in L-inf and L2, the norms, the attack registry and settings checks,
and FAB-T's minimal norms in the evaluator."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latentadv import base_config
from latentadv import evaluate
from latentadv import parallel
from latentadv import validation
from latentadv.attacks import apgd
from latentadv.attacks import fab
from latentadv.attacks import losses
from latentadv.attacks import norms
from latentadv.attacks import pgd
from latentadv.attacks import registry
from latentadv.attacks import square

from references import pgd_minimal_eps, random_hyperplane_problems

SHAPE = (32, 8, 8, 1)
EPS = 0.1


class _MLP(nn.Module):
  """Tiny MLP on (B, 8, 8, 1) images -> (B, 10) logits."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


@pytest.fixture(scope='module')
def problem():
  """Returns (logits_fn, x, y): y is the model's prediction, wrong on the first quarter."""
  model = _MLP()
  x = jax.random.uniform(jax.random.key(0), SHAPE)
  variables = model.init(jax.random.key(1), x)
  logits_fn = functools.partial(model.apply, variables)
  y = logits_fn(x).argmax(-1)
  y = y.at[:SHAPE[0] // 4].set((y[:SHAPE[0] // 4] + 1) % 10)
  return logits_fn, x, y


def _robust(logits_fn, x, y, **kwargs):
  kwargs = dict(eps=EPS, step_size=EPS / 4, steps=5, restarts=2) | kwargs
  return pgd.pgd_robust(logits_fn, x, y, jax.random.key(7), **kwargs)


def test_cross_entropy_matches_optax():
  logits = jax.random.normal(jax.random.key(0), (6, 5)) * 3
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  chex.assert_trees_all_close(
      losses.cross_entropy(logits, labels),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_margin_hand_example():
  logits = jnp.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, -1.0, 0.5]])
  labels = jnp.array([0, 1, 0])
  chex.assert_trees_all_close(losses.margin(logits, labels), jnp.array([2.0, -1.0, -4.5]))


@pytest.mark.parametrize('loss', ['ce', 'margin'])
def test_pgd_stays_in_ball_and_raises_loss(problem, loss):
  logits_fn, x, y = problem
  x_adv = pgd.pgd(logits_fn, x, y, jax.random.key(3), eps=EPS, step_size=EPS / 4,
                      steps=5, loss=loss)
  chex.assert_equal_shape([x_adv, x])
  assert jnp.all(jnp.abs(x_adv - x) <= EPS + 1e-6)
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  assert jnp.any(x_adv == 0) and jnp.any(x_adv == 1)  # The [0, 1] clip was active.
  loss_fn = losses.LOSSES[loss]
  assert loss_fn(logits_fn(x_adv), y).mean() > loss_fn(logits_fn(x), y).mean() + 0.1


def test_pgd_single_step_without_start_is_fgsm(problem):
  logits_fn, x, y = problem
  grad = jax.grad(
      lambda x: optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), y).sum())(x)
  fgsm = jnp.clip(x + EPS * jnp.sign(grad), 0.0, 1.0)
  x_adv = pgd.pgd(logits_fn, x, y, jax.random.key(3), eps=EPS, step_size=EPS, steps=1,
                      random_start=False)
  chex.assert_trees_all_close(x_adv, fgsm, atol=1e-6)


def test_pgd_robust_bounded_by_clean(problem):
  logits_fn, x, y = problem
  clean = logits_fn(x).argmax(-1) == y
  robust = _robust(logits_fn, x, y)
  chex.assert_shape(robust, (SHAPE[0],))
  chex.assert_type(robust, bool)
  assert not jnp.any(robust & ~clean)
  assert robust.sum() < clean.sum()  # The attack finds something at this eps.
  np.testing.assert_array_equal(_robust(logits_fn, x, y, eps=0.0), clean)


def test_pgd_robust_counts_intermediate_iterates():
  # One pixel at 0.5, eps 0.25, step 1: every start below 0.75 moves to 0.75 (fooled),
  # where the gradient turns and the next step lands on 0.25 (correct again).
  def logits_fn(x):
    z = x.reshape(-1)
    f = jnp.where(z < 0.75, 10 * (z - 0.6), 1.5 - 10 * (z - 0.75))
    return jnp.stack([jnp.zeros_like(f), f], axis=-1)

  x, y = jnp.full((1, 1, 1, 1), 0.5), jnp.array([0])
  kwargs = dict(eps=0.25, step_size=1.0, steps=2)
  x_last = pgd.pgd(logits_fn, x, y, jax.random.key(0), **kwargs)
  np.testing.assert_allclose(x_last.reshape(-1), [0.25])
  assert logits_fn(x_last).argmax(-1) == y
  assert not pgd.pgd_robust(logits_fn, x, y, jax.random.key(0), restarts=1, **kwargs)[0]


def test_pgd_robust_restarts_draw_new_starts():
  # With no steps only the random starts are checked; each fools with probability 1/2.
  def logits_fn(x):
    return jnp.stack([jnp.zeros(x.shape[0]), x.reshape(-1) - 0.5], axis=-1)

  x, y = jnp.full((64, 1, 1, 1), 0.5), jnp.zeros(64, jnp.int32)
  robust = functools.partial(pgd.pgd_robust, logits_fn, x, y, jax.random.key(0), eps=0.25,
                             step_size=0.1, steps=0)
  assert 16 < robust(restarts=1).sum() < 48
  assert robust(restarts=8).sum() <= 2


@pytest.mark.parametrize('loss', ['ce', 'margin'])
def test_pgd_robust_matches_closed_form_on_binary_linear(loss):
  w = jax.random.normal(jax.random.key(0), (64, 2)) * 0.3
  b = jnp.array([0.0, 0.2])

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ w + b

  x = jax.random.uniform(jax.random.key(1), (256, 8, 8, 1))
  y = jax.random.bernoulli(jax.random.key(2), 0.5, (256,)).astype(jnp.int32)
  eps = 0.03
  # The worst point for class y moves every pixel by eps along sign(w_other - w_y), then clips.
  direction = jnp.sign(w[:, 1 - y] - w[:, y]).T.reshape(x.shape)
  worst = jnp.clip(x + eps * direction, 0.0, 1.0)
  expected = (logits_fn(x).argmax(-1) == y) & (logits_fn(worst).argmax(-1) == y)
  assert 0 < expected.sum() < (logits_fn(x).argmax(-1) == y).sum()
  robust = pgd.pgd_robust(logits_fn, x, y, jax.random.key(3), eps=eps, step_size=eps,
                              steps=2, restarts=1, loss=loss)
  np.testing.assert_array_equal(robust, expected)


def test_attacks_are_deterministic_and_jittable(problem):
  logits_fn, x, y = problem
  kwargs = dict(eps=EPS, step_size=EPS / 4, steps=3)
  jitted_pgd = jax.jit(functools.partial(pgd.pgd, logits_fn, **kwargs))
  x_adv = jitted_pgd(x, y, jax.random.key(5))
  np.testing.assert_array_equal(x_adv, jitted_pgd(x, y, jax.random.key(5)))
  assert jnp.any(x_adv != jitted_pgd(x, y, jax.random.key(6)))
  chex.assert_trees_all_close(
      x_adv, pgd.pgd(logits_fn, x, y, jax.random.key(5), **kwargs), atol=1e-6)

  robust = jax.jit(functools.partial(pgd.pgd_robust, logits_fn, restarts=2, **kwargs))
  np.testing.assert_array_equal(robust(x, y, jax.random.key(5)),
                                robust(x, y, jax.random.key(5)))
  np.testing.assert_array_equal(
      robust(x, y, jax.random.key(5)),
      pgd.pgd_robust(logits_fn, x, y, jax.random.key(5), restarts=2, **kwargs))


def test_the_registry_builds_every_declared_attack_from_its_settings_sub_config():
  """Each attack reads config.eval.<its settings key>; suites name declared attacks only."""
  eval_config = base_config.get_config().eval
  for key, default_config in registry.SETTINGS.items():
    assert eval_config[key].to_dict() == default_config().to_dict()
  assert all(set(names) <= set(registry.ATTACKS) for names in registry.SUITES.values())
  eval_config.apgd.targets = 4
  eval_config.fab.update(targets=3, restarts=2)
  runs = {attack.name: attack.runs
          for attack in registry.build_suite(list(registry.ATTACKS), eval_config, EPS)}
  assert runs == {'pgd': eval_config.pgd.restarts, 'bpda': eval_config.pgd.restarts,
                  'apgd-ce': 1, 'apgd-t': 4, 'fab-t': 6, 'square': 1}
  adaptive = registry.build_suite('autoattack', eval_config, EPS, has_quantiser=True)
  assert [(a.name, a.straight_through) for a in adaptive] == [
      ('apgd-ce', True), ('apgd-t', True), ('fab-t', True), ('square', False)]
  assert not any(a.straight_through for a in registry.build_suite('apgd-ce', eval_config, EPS,
                                                                  has_quantiser=True))
  for suite in ('autoatack', ['pgd', 'pgd'], ['fgsm']):
    with pytest.raises(ValueError):
      registry.attack_names(suite)


@pytest.mark.parametrize('key,value', [('eval.apgd.steps', 0), ('eval.fab.targets', -1),
                                       ('eval.pgd.loss', 'hinge'), ('eval.pgd.step_size', 0.0),
                                       ('eval.square.p_init', 1.5)])
def test_invalid_attack_settings_name_their_key(key, value):
  config = base_config.get_config()
  config.update_from_flattened_dict({key: value})
  with pytest.raises(validation.ConfigError, match=f'config.{key} = '):
    validation.validate(config)


# ------------------------------------------------------ APGD, APGD-T, Square and the DLR losses

STRONG_EPS = 0.06  # Small enough that PGD leaves an undefended MNIST MLP partly robust.
STRONG_STEPS = 5  # Few enough that PGD-5 and APGD-5 differ on that MLP.


@pytest.fixture(scope='module')
def mnist_256(mnist_mlp):
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
    'apgd_ce': functools.partial(apgd.apgd, eps=STRONG_EPS, steps=STRONG_STEPS),
    'apgd_dlr': functools.partial(apgd.apgd, eps=STRONG_EPS, steps=20, loss='dlr',
                                  unroll=False),
    'apgd_t': functools.partial(apgd.apgd_targeted, eps=STRONG_EPS, steps=5, num_targets=3),
    'square': functools.partial(square.square, eps=STRONG_EPS, n_queries=200),
}


@pytest.fixture(scope='module')
def attacked(mnist_256):
  """Jitted attacks, and their results on `mnist_256` with rng key 5:
  {name: (fn, x_adv, fooled)}."""
  logits_fn, x, y = mnist_256
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
def test_attack_stays_in_ball_and_fooled_points_are_adversarial(mnist_256, attacked, name):
  logits_fn, x, y = mnist_256
  _, x_adv, fooled = attacked[name]
  chex.assert_equal_shape([x_adv, x])
  chex.assert_shape(fooled, y.shape)
  assert jnp.all(jnp.abs(x_adv - x) <= STRONG_EPS + 1e-6)
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  np.testing.assert_array_equal(fooled, logits_fn(x_adv).argmax(-1) != y)
  assert 0 < fooled.mean() < 1


@pytest.mark.parametrize('name', ATTACKS)
def test_attack_is_deterministic(mnist_256, attacked, name):
  _, x, y = mnist_256
  fn, x_adv, fooled = attacked[name]
  x_again, fooled_again = fn(x, y, jax.random.key(5))
  np.testing.assert_array_equal(x_again, x_adv)
  np.testing.assert_array_equal(fooled_again, fooled)
  assert jnp.any(fn(x, y, jax.random.key(6))[0] != x_adv)


def test_apgd_targeted_is_its_runs_combined(mnist_256, attacked):
  logits_fn, x, y = mnist_256
  _, x_adv, fooled = attacked['apgd_t']
  run = jax.jit(functools.partial(apgd.apgd_targeted_run, logits_fn, eps=STRONG_EPS, steps=5,
                                  unroll=False))
  x_expected, fooled_expected = x, jnp.zeros_like(fooled)
  for t in range(3):
    x_run, fooled_run = run(x, y, jax.random.fold_in(jax.random.key(5), t), t)
    x_expected = jnp.where(fooled_expected[:, None, None, None], x_expected, x_run)
    fooled_expected |= fooled_run
  np.testing.assert_array_equal(fooled, fooled_expected)
  np.testing.assert_allclose(x_adv, x_expected, atol=1e-6)


def test_apgd_at_least_as_strong_as_pgd(mnist_256, attacked):
  logits_fn, x, y = mnist_256
  clean = logits_fn(x).argmax(-1) == y
  pgd_robust = jax.jit(functools.partial(
      pgd.pgd_robust, logits_fn, eps=STRONG_EPS, step_size=STRONG_EPS / 4, steps=STRONG_STEPS,
      restarts=1))
  robust_pgd = pgd_robust(x, y, jax.random.key(5))
  robust_apgd = clean & ~attacked['apgd_ce'][2]
  assert 0.2 < robust_pgd.mean() < clean.mean() - 0.2  # PGD neither fails nor saturates.
  assert robust_apgd.sum() <= robust_pgd.sum()
  robust_all = robust_apgd & ~attacked['apgd_dlr'][2] & ~attacked['apgd_t'][2]
  assert robust_all.sum() < robust_apgd.sum()  # The DLR runs fool examples APGD-CE missed.


def test_square_fools_undefended_model_without_gradients(mnist_256):
  logits_fn, x, y = mnist_256
  logits_fn = _gradient_free(logits_fn)
  with pytest.raises(AssertionError, match='took a gradient'):
    jax.grad(lambda x: logits_fn(x).sum())(x[:1])
  clean = logits_fn(x).argmax(-1) == y
  x_adv, fooled = jax.jit(functools.partial(square.square, logits_fn, eps=0.15,
                                            n_queries=300))(x, y, jax.random.key(0))
  # Every pixel sits on a vertex of the eps-ball, unless clipped to [0, 1].
  assert jnp.all(jnp.isclose(jnp.abs(x_adv - x), 0.15) | (x_adv == 0) | (x_adv == 1))
  assert (fooled & clean).sum() > 0.8 * clean.sum()


# ------------------------------------------------------------ FAB-T and the shared MNIST points

N = 64  # MNIST test points of the FAB-T and L2 tests.


@pytest.fixture(scope='module')
def mnist(mnist_mlp):
  """(model, variables, logits_fn, x, y, correct): the MLP after 60 Adam steps, N MNIST test
  points and whether the MLP classifies each correctly."""
  model, variables, x, y = mnist_mlp
  logits_fn = jax.jit(functools.partial(model.apply, variables))
  x, y = jnp.asarray(x[:N]), jnp.asarray(y[:N])
  return model, variables, logits_fn, x, y, np.asarray(logits_fn(x).argmax(-1) == y)


FAB_EPS = 0.1  # Most points of the briefly trained MLP have an adversarial example this close.


@pytest.fixture(scope='module')
def fab_t(mnist):
  """(x_adv, norm) of AutoAttack's FAB-T (9 targets, 100 steps) on `mnist`'s points."""
  _, _, logits_fn, x, y, _ = mnist
  return jax.jit(functools.partial(fab.fab_targeted, logits_fn, eps=FAB_EPS))(
      x, y, jax.random.key(0))


def _reference_linf_projection(t, w, b):
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
  expected = _reference_linf_projection(t, w, b)
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
  _, _, logits_fn, x, y, _ = mnist
  x_adv, norm = fab_t
  found = np.isfinite(norm)
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  np.testing.assert_allclose(norm[found], fab.linf_norm(x_adv - x)[found], rtol=1e-6)
  assert np.all(logits_fn(x_adv).argmax(-1)[found] != y[found])
  np.testing.assert_array_equal(x_adv[~found], x[~found])
  clean_wrong = logits_fn(x).argmax(-1) != y
  np.testing.assert_array_equal(norm[clean_wrong], 0)
  # Counted as fooled at eps exactly when found within eps (and misclassified, above).
  assert 0 < (norm <= FAB_EPS).sum() < (norm < np.inf).sum()
  np.testing.assert_array_equal(fab.fooled_within(logits_fn, x, y, x_adv, FAB_EPS), norm <= FAB_EPS)


def test_fools_an_undefended_model_at_small_eps(mnist, fab_t):
  _, _, logits_fn, x, y, _ = mnist
  correct = np.asarray(logits_fn(x).argmax(-1) == y)
  norm = np.asarray(fab_t[1])
  assert correct.mean() > 0.8
  assert (norm[correct] <= FAB_EPS).mean() > 0.75


def test_minimal_norm_matches_a_pgd_bisection(mnist, fab_t):
  """The median minimal norm of FAB-T is within 10 % of the smallest eps (8 bisection steps
  in [0, 0.25]) at which PGD-100 (step eps / 10, any iterate) fools each point."""
  _, _, logits_fn, x, y, _ = mnist
  correct = np.asarray(logits_fn(x).argmax(-1) == y)

  pgd_eps = pgd_minimal_eps(logits_fn, x, y, 'linf', upper=0.25)
  assert (pgd_eps[correct] < 0.25).mean() > 0.95
  pgd_median = np.median(pgd_eps[correct])
  fab_median = np.median(np.asarray(fab_t[1])[correct])
  assert fab_median <= 1.10 * pgd_median, (fab_median, pgd_median)


def test_evaluator_counts_only_points_fooled_within_eps(mnist):
  model, variables, _, x, y, _ = mnist
  assert registry.SUITES['autoattack'] == ('apgd-ce', 'apgd-t', 'fab-t', 'square')
  eval_config = base_config.get_config('smoke').eval
  eval_config.fab.update(targets=2, restarts=2)
  attacks = registry.build_suite('fab-t', eval_config, FAB_EPS)
  assert attacks[0].runs == 4
  evaluator = evaluate.Evaluator(model.apply, parallel.make_mesh(jax.devices()[:1]), attacks,
                                 eps=FAB_EPS, batch_size=64)
  record, examples = evaluator.evaluate(variables, np.asarray(x), np.asarray(y),
                                        jax.random.key(0))
  fooled, norm, correct = examples['fooled_by_fab-t'], examples['fab_linf_norm'], examples[
      'correct']
  assert norm.shape == (N,) and np.all(np.isinf(norm[~correct]))  # Not attacked.
  np.testing.assert_array_equal(fooled, correct & (norm <= FAB_EPS))
  np.testing.assert_array_equal(examples['robust'], correct & ~fooled)
  assert record['fab-t_accuracy'] < record['clean_accuracy'] - 0.3
  assert np.any(correct & ~fooled & np.isfinite(norm))  # Found farther out, not counted.
  settings = record['attacks']['fab-t']
  assert (settings['steps'], settings['targets'], settings['restarts']) == (5, 2, 2)


# -------------------------------------------------------------------------- The L2 threat model

L2_EPS = 1.0  # L2 radius at which PGD fools about 60 % of the briefly trained MLP's points.
L2_LINF_EPS = L2_EPS / np.sqrt(784)  # The largest L-inf ball inside the L2 ball of that radius.
L2_STEPS = 20  # Gradient steps of PGD and APGD.
L2_QUERIES = 1000  # Square's queries.
L2_FAB_TARGETS, L2_FAB_STEPS = 3, 50  # Less than AutoAttack's 9 x 100: the same median here.


def _attack(name, logits_fn, x, y, norm):
  """attack(eps) -> (x_adv (B, H, W, C), fooled (B,) bool, FAB-T's distance (B,) or None) of
  the attack `name` in `norm` on x, y, jitted (eps traced)."""
  rng = jax.random.key(0)

  def run(eps):
    if name == 'pgd':
      x_adv = pgd.pgd(logits_fn, x, y, rng, eps=eps, step_size=eps / 4, steps=L2_STEPS,
                      norm=norm)
      return x_adv, pgd.fooled_in_restart(logits_fn, x, y, rng, eps=eps, step_size=eps / 4,
                                          steps=L2_STEPS, norm=norm), None
    if name == 'apgd-ce':
      return *apgd.apgd(logits_fn, x, y, rng, eps=eps, steps=L2_STEPS, unroll=False,
                        norm=norm), None
    if name == 'apgd-t':
      return *apgd.apgd_targeted_run(logits_fn, x, y, rng, 0, eps=eps, steps=L2_STEPS,
                                     unroll=False, norm=norm), None
    if name == 'square':
      return *square.square(logits_fn, x, y, rng, eps=eps, n_queries=L2_QUERIES, norm=norm), None
    x_adv, distance = fab.fab_targeted(logits_fn, x, y, rng, eps=eps, steps=L2_FAB_STEPS,
                                       num_targets=L2_FAB_TARGETS, norm=norm)  # 'fab-t'
    return x_adv, fab.fooled_within(logits_fn, x, y, x_adv, eps, norm), distance
  return jax.jit(run)


@pytest.fixture(scope='module')
def attack(mnist):
  """attack(name, norm, eps) -> `_attack`'s outputs on `mnist`'s points, each run once."""
  _, _, logits_fn, x, y, _ = mnist

  @functools.cache
  def compiled(name, norm):
    return _attack(name, logits_fn, x, y, norm)

  @functools.cache
  def run(name, norm, eps):
    return compiled(name, norm)(eps)
  return run


def _reference_l2_projection(t, w, b):
  """project_l2 by bisection on lam in float64 numpy, point by point: coordinate i moves by
  min(lam |w_i|, room_i) towards the hyperplane (the KKT conditions of the minimal L2 step
  within the box)."""
  out = np.zeros_like(t)
  for i in range(len(t)):
    gap = w[i] @ t[i] - b[i]
    direction = -np.sign(w[i]) * (1.0 if gap >= 0 else -1.0)
    room = np.where(direction > 0, 1 - t[i], t[i])

    def shift(lam):
      return np.abs(w[i]) @ np.minimum(lam * np.abs(w[i]), room)
    lo, hi = 0.0, 1e6
    if shift(hi) >= abs(gap):
      for _ in range(70):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if shift(mid) >= abs(gap) else (mid, hi)
    out[i] = direction * np.minimum(hi * np.abs(w[i]), room)
  return out


def test_projection_is_the_minimal_l2_step_to_the_hyperplane_in_the_box():
  t, w, b = random_hyperplane_problems((0.3, 4))
  d = np.asarray(fab.project_l2(*map(jnp.asarray, (t, w, b))), np.float64)
  np.testing.assert_allclose(d, _reference_l2_projection(t, w, b), atol=2e-5)
  assert np.all((t + d >= -1e-6) & (t + d <= 1 + 1e-6))
  on_plane = np.abs(np.sum(w * (t + d), axis=1) - b) < 1e-4
  assert 0 < on_plane.sum() < 40  # Both reachable and out-of-reach hyperplanes are exercised.
  np.testing.assert_array_equal(d[w == 0], 0)
  # Inside the box, away from its faces, the step is the unconstrained one, parallel to w.
  t, w = t[:, 10:] * 0.4 + 0.3, w[:, 10:]
  gap = np.random.default_rng(1).normal(size=40) * 0.05
  d = np.asarray(fab.project_l2(*map(jnp.asarray, (t, w, (w * t).sum(1) - gap))))
  np.testing.assert_allclose(d, -gap[:, None] * w / (w * w).sum(1, keepdims=True), atol=1e-6)


def test_projection_and_sampling_stay_in_the_ball():
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  eps = jnp.linspace(0.5, 2.0, 8)[:, None, None, None]  # A radius per example.
  far = x + jax.random.normal(jax.random.key(1), x.shape)
  projected = norms.project(far, x, eps, 'l2')
  lengths = norms.per_example(projected - x, 'l2')
  assert jnp.all(lengths <= eps.ravel() * (1 + 1e-5)) and jnp.all(lengths > 0.3)
  assert jnp.all((projected >= 0) & (projected <= 1))
  near = jnp.clip(x + 1e-3 * jnp.sign(far - x), 0, 1)
  np.testing.assert_allclose(norms.project(near, x, eps, 'l2'), near, atol=1e-7)
  delta = norms.sample_ball(jax.random.key(2), x.shape, x.dtype, eps, 'l2')
  lengths = norms.per_example(delta, 'l2')
  assert jnp.all(lengths <= eps.ravel() * (1 + 1e-5)) and jnp.all(lengths > 0.9 * eps.ravel())
  direction = norms.steepest_direction(far - x, 'l2')
  np.testing.assert_allclose(norms.per_example(direction, 'l2'), 1, rtol=1e-5)


@pytest.mark.parametrize('name, share', [('pgd', 0.5), ('apgd-ce', 0.5), ('apgd-t', 0.5),
                                         ('fab-t', 0.5), ('square', 0.2)])
def test_attack_stays_in_the_l2_ball_and_fools_more_than_linf(mnist, attack, name, share):
  """Each L2 attack keeps its points in the L2 ball and [0, 1] and fools more of the MLP's
  correct points at L2 radius L2_EPS than the L-inf attack does at L2_EPS / 28."""
  _, _, logits_fn, x, y, correct = mnist
  x_adv, fooled, _ = attack(name, 'l2', L2_EPS)
  linf_fooled = attack(name, 'linf', L2_LINF_EPS)[1]
  fooled, linf_fooled = np.asarray(fooled) & correct, np.asarray(linf_fooled) & correct
  lengths = np.asarray(norms.per_example(x_adv - x, 'l2'))
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  if name == 'fab-t':  # x_adv is the closest adversarial point, fooled where within L2_EPS.
    assert np.all(lengths[fooled] <= L2_EPS + 1e-5) and np.any(lengths > L2_EPS)
  else:
    assert np.all(lengths <= L2_EPS + 1e-5)
  assert np.all(np.asarray(logits_fn(x_adv).argmax(-1) != y)[fooled])
  assert fooled.sum() > share * correct.sum()
  assert fooled.sum() > 1.5 * linf_fooled.sum()


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(mnist, attack):
  correct = mnist[-1]
  counts = np.array([[(np.asarray(attack(name, 'l2', eps)[1]) & correct).sum()
                      for name in ('pgd', 'apgd-ce')] for eps in (0.5, 0.75, L2_EPS)])
  assert np.all(counts[:, 1] >= counts[:, 0]), counts
  assert np.all(np.diff(counts, axis=0) >= 0) and counts[-1, 1] > counts[0, 1]  # Grows with eps.


def test_fab_minimal_l2_norm_matches_a_pgd_bisection(mnist, attack):
  """The median minimal L2 norm of FAB-T (L2_FAB_TARGETS x L2_FAB_STEPS) is within 10 % of the
  smallest eps (8 bisection steps in [0, 3]) at which PGD-100-L2 fools each point."""
  _, _, logits_fn, x, y, correct = mnist
  x_adv, _, distance = attack('fab-t', 'l2', L2_EPS)
  found = np.isfinite(distance)
  np.testing.assert_allclose(np.asarray(distance)[found],
                             np.asarray(norms.per_example(x_adv - x, 'l2'))[found], rtol=1e-5)
  pgd_eps = pgd_minimal_eps(logits_fn, x, y, 'l2', upper=3.0)
  assert (pgd_eps[correct] < 3.0).mean() > 0.95
  pgd_median = np.median(pgd_eps[correct])
  fab_median = np.median(np.asarray(distance)[correct])
  assert abs(fab_median - pgd_median) <= 0.10 * pgd_median, (fab_median, pgd_median)


def test_evaluator_in_l2_keeps_fab_l2_norm_and_counts_points_within_eps(mnist):
  model, variables, _, x, y, _ = mnist
  eval_config = base_config.get_config('smoke').eval
  eval_config.norm, eval_config.fab.targets = 'l2', 2
  attacks = registry.build_suite('fab-t', eval_config, L2_EPS)
  evaluator = evaluate.Evaluator(model.apply, parallel.make_mesh(jax.devices()[:1]), attacks,
                                 eps=L2_EPS, batch_size=64)
  record, examples = evaluator.evaluate(variables, np.asarray(x), np.asarray(y),
                                        jax.random.key(0))
  assert 'fab_linf_norm' not in examples and record['attacks']['fab-t']['norm'] == 'l2'
  fooled, distance = examples['fooled_by_fab-t'], examples['fab_l2_norm']
  np.testing.assert_array_equal(fooled, examples['correct'] & (distance <= L2_EPS))
  assert 0 < fooled.sum() < np.isfinite(distance).sum()  # Some found beyond L2_EPS: not counted.
