"""Tests for the L-inf attacks and their losses on tiny models, and the attack registry."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latentadv import base_config
from latentadv import validation
from latentadv.attacks import losses
from latentadv.attacks import pgd
from latentadv.attacks import registry

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
