"""The L2 threat model: attacks/norms.py, every attack's L2 version, the L2 training methods
(pgd, fgsm_rs), the evaluator's config.eval.norm and the config checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import pgd_minimal_eps, random_hyperplane_problems
from latentadv import base_config
from latentadv import evaluate
from latentadv import methods
from latentadv import parallel
from latentadv import validation
from latentadv.attacks import apgd
from latentadv.attacks import fab
from latentadv.attacks import norms
from latentadv.attacks import pgd
from latentadv.attacks import registry
from latentadv.attacks import square

EPS = 1.0  # L2 radius at which PGD fools about 60 % of the briefly trained MLP's points.
LINF_EPS = EPS / np.sqrt(784)  # The largest L-inf ball inside the L2 ball of radius EPS.
N = 64  # Test points.
STEPS = 20  # Gradient steps of PGD and APGD.
QUERIES = 1000  # Square's queries.
FAB_TARGETS, FAB_STEPS = 3, 50  # Less than AutoAttack's 9 x 100: the same median here.


@pytest.fixture(scope='module')
def mnist(mnist_mlp):
  """(model, variables, logits_fn, x, y, correct): the MLP after 60 Adam steps, N MNIST test
  points and whether the MLP classifies each correctly."""
  model, variables, x, y = mnist_mlp
  logits_fn = jax.jit(functools.partial(model.apply, variables))
  x, y = jnp.asarray(x[:N]), jnp.asarray(y[:N])
  return model, variables, logits_fn, x, y, np.asarray(logits_fn(x).argmax(-1) == y)


def _attack(name, logits_fn, x, y, norm):
  """attack(eps) -> (x_adv (B, H, W, C), fooled (B,) bool, FAB-T's distance (B,) or None) of
  the attack `name` in `norm` on x, y, jitted (eps traced)."""
  rng = jax.random.key(0)

  def run(eps):
    if name == 'pgd':
      x_adv = pgd.pgd(logits_fn, x, y, rng, eps=eps, step_size=eps / 4, steps=STEPS,
                      norm=norm)
      return x_adv, pgd.fooled_in_restart(logits_fn, x, y, rng, eps=eps, step_size=eps / 4,
                                          steps=STEPS, norm=norm), None
    if name == 'apgd-ce':
      return *apgd.apgd(logits_fn, x, y, rng, eps=eps, steps=STEPS, unroll=False,
                        norm=norm), None
    if name == 'apgd-t':
      return *apgd.apgd_targeted_run(logits_fn, x, y, rng, 0, eps=eps, steps=STEPS,
                                     unroll=False, norm=norm), None
    if name == 'square':
      return *square.square(logits_fn, x, y, rng, eps=eps, n_queries=QUERIES, norm=norm), None
    x_adv, distance = fab.fab_targeted(logits_fn, x, y, rng, eps=eps, steps=FAB_STEPS,
                                       num_targets=FAB_TARGETS, norm=norm)  # 'fab-t'
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


def _reference_projection(t, w, b):
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
  np.testing.assert_allclose(d, _reference_projection(t, w, b), atol=2e-5)
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
  correct points at L2 radius EPS than the L-inf attack does at EPS / 28."""
  _, _, logits_fn, x, y, correct = mnist
  x_adv, fooled, _ = attack(name, 'l2', EPS)
  linf_fooled = attack(name, 'linf', LINF_EPS)[1]
  fooled, linf_fooled = np.asarray(fooled) & correct, np.asarray(linf_fooled) & correct
  lengths = np.asarray(norms.per_example(x_adv - x, 'l2'))
  assert jnp.all((x_adv >= 0) & (x_adv <= 1))
  if name == 'fab-t':  # x_adv is the closest adversarial point, fooled where within EPS.
    assert np.all(lengths[fooled] <= EPS + 1e-5) and np.any(lengths > EPS)
  else:
    assert np.all(lengths <= EPS + 1e-5)
  assert np.all(np.asarray(logits_fn(x_adv).argmax(-1) != y)[fooled])
  assert fooled.sum() > share * correct.sum()
  assert fooled.sum() > 1.5 * linf_fooled.sum()


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(mnist, attack):
  correct = mnist[-1]
  counts = np.array([[(np.asarray(attack(name, 'l2', eps)[1]) & correct).sum()
                      for name in ('pgd', 'apgd-ce')] for eps in (0.5, 0.75, EPS)])
  assert np.all(counts[:, 1] >= counts[:, 0]), counts
  assert np.all(np.diff(counts, axis=0) >= 0) and counts[-1, 1] > counts[0, 1]  # Grows with eps.


def test_fab_minimal_l2_norm_matches_a_pgd_bisection(mnist, attack):
  """The median minimal L2 norm of FAB-T (FAB_TARGETS x FAB_STEPS) is within 10 % of the
  smallest eps (8 bisection steps in [0, 3]) at which PGD-100-L2 fools each point."""
  _, _, logits_fn, x, y, correct = mnist
  x_adv, _, distance = attack('fab-t', 'l2', EPS)
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
  attacks = registry.build_suite('fab-t', eval_config, EPS)
  evaluator = evaluate.Evaluator(model.apply, parallel.make_mesh(jax.devices()[:1]), attacks,
                                 eps=EPS, batch_size=64)
  record, examples = evaluator.evaluate(variables, np.asarray(x), np.asarray(y),
                                        jax.random.key(0))
  assert 'fab_linf_norm' not in examples and record['attacks']['fab-t']['norm'] == 'l2'
  fooled, distance = examples['fooled_by_fab-t'], examples['fab_l2_norm']
  np.testing.assert_array_equal(fooled, examples['correct'] & (distance <= EPS))
  assert 0 < fooled.sum() < np.isfinite(distance).sum()  # Some found beyond EPS: not counted.


def test_training_evaluator_uses_the_method_norm(mnist):
  model = mnist[0]
  config = base_config.get_config()
  config.method.name, config.method.norm = 'pgd', 'l2'
  evaluator = evaluate.from_config(model, parallel.make_mesh(jax.devices()[:1]), config,
                                   steps=2, restarts=1)
  assert evaluator.attacks[0].settings['norm'] == 'l2'


@pytest.mark.parametrize('name', ['pgd', 'fgsm_rs'])
def test_l2_training_steps_train_on_points_in_the_l2_ball(mnist, name):
  """The input of the training pass of methods pgd and fgsm_rs with config.method.norm l2 is
  within the L2 ball (much smaller than the L-inf ball of the same eps) and in [0, 1]."""
  model, variables, _, x, y, _ = mnist
  config = base_config.get_config()
  config.method.update(name=name, norm='l2', eps=EPS, attack_bn='eval')
  config.method.pgd.update(steps=3, step_size=EPS / 4)
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
  assert jnp.all(lengths <= EPS + 1e-5) and jnp.median(lengths) > 0.5 * EPS
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
