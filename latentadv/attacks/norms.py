"""Threat models: the L-inf and L2 balls of perturbations, and what attacks need of them.

`norm` is 'linf' or 'l2' (NORMS) everywhere: config.eval.norm for the evaluator's attacks,
config.method.norm for the training methods that have an L2 version. Images are in [0, 1]
and radii eps in pixel units; eps may be a Python number, a traced scalar, or an array that
broadcasts against the images (e.g. (B, 1, 1, 1), one radius per example).

The L2 projection scales the perturbation radially onto the ball and then clips to [0, 1],
as AutoAttack does; clipping only moves coordinates towards x (which is in [0, 1]), so the
result stays in the ball. It is the exact Euclidean projection onto the ball, not onto the
intersection of the ball and the box.
"""

import math

import jax
import jax.numpy as jnp

NORMS = ('linf', 'l2')
LABELS = {'linf': 'L-inf', 'l2': 'L2'}

_TINY = 1e-12  # Guards divisions by a zero norm (AutoAttack's constant).


def per_example(delta: jax.Array, norm: str, keepdims: bool = False) -> jax.Array:
  """The `norm` of each row of delta (B, ...): (B,), or (B, 1, ..., 1) with keepdims."""
  flat = delta.reshape(delta.shape[0], -1)
  if norm == 'linf':
    result = jnp.abs(flat).max(axis=-1)
  elif norm == 'l2':
    result = jnp.sqrt(jnp.sum(flat * flat, axis=-1))
  else:
    raise ValueError(f'Unknown norm {norm!r}; valid: {", ".join(NORMS)}.')
  return result.reshape(-1, *[1] * (delta.ndim - 1)) if keepdims else result


def project(x_adv: jax.Array, x: jax.Array, eps, norm: str = 'linf') -> jax.Array:
  """x_adv (B, H, W, C) moved into the `norm` eps-ball around x and clipped to [0, 1]."""
  if norm == 'linf':
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
  delta = x_adv - x
  length = per_example(delta, norm, keepdims=True)
  scale = jnp.minimum(1.0, eps / jnp.maximum(length, _TINY))
  return jnp.clip(x + scale * delta, 0.0, 1.0)


def steepest_direction(grad: jax.Array, norm: str) -> jax.Array:
  """The unit-`norm` step (B, ...) that raises a loss with gradient grad (B, ...) the most to
  first order: sign(grad) for L-inf, grad / ||grad||_2 per example for L2 (0 where grad is)."""
  if norm == 'linf':
    return jnp.sign(grad)
  return grad / (per_example(grad, norm, keepdims=True) + _TINY)


def sample_ball(rng: jax.Array, shape: tuple[int, ...], dtype, eps, norm: str) -> jax.Array:
  """Perturbations (B, ...) = shape, uniform in the `norm` eps-ball, independent per example.

  L2: a normal direction scaled to the radius eps * u^(1 / n), u uniform, n the dimension.
  """
  if norm == 'linf':
    return jax.random.uniform(rng, shape, dtype, -eps, eps)
  direction_rng, radius_rng = jax.random.split(rng)
  direction = jax.random.normal(direction_rng, shape, dtype)
  direction /= per_example(direction, norm, keepdims=True)
  u = jax.random.uniform(radius_rng, (shape[0],) + (1,) * (len(shape) - 1), dtype)
  return eps * u ** (1.0 / math.prod(shape[1:])) * direction
