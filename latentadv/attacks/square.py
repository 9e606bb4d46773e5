"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L-inf: score-based, it never takes a gradient.

Starting from vertical stripes of +-eps, each query sets a random square window (its own
position per example) of every not-yet-fooled example to x +- eps, one random sign per
channel (the paper's +-2 eps update, projected), and keeps the change if the margin loss
(losses.margin) rises. The window covers a fraction p of the image: p_init, halved
after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000 queries (the paper's
schedule, rescaled to n_queries as in AutoAttack).

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K). The queries are a rolled
`while_loop` (forward passes do not suffer XLA:CPU's in-loop slowdown, and 5,000 unrolled
queries would not compile), which ends early once every example is fooled.
"""

import jax
import jax.numpy as jnp

from latentadv.attacks import losses
from latentadv.attacks.pgd import LogitsFn

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # Out of 10,000 queries.


def _window_side(i: jax.Array, n_queries: int, p_init: float, height: int,
                 width: int) -> jax.Array:
  """Side of the square window at query i: round(sqrt(p * H * W)), within [1, min(H, W)]."""
  progress = i * 10_000 // n_queries
  p = p_init / 2.0 ** jnp.sum(progress > jnp.array(_HALVINGS))
  side = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  return jnp.clip(side, 1, min(height, width))


def _random_signs(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform random +-1.0 of the given shape."""
  return jnp.where(jax.random.bernoulli(rng, 0.5, shape), 1.0, -1.0)


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
           n_queries: int = 5000, p_init: float = 0.8) -> tuple[jax.Array, jax.Array]:
  """Untargeted L-inf Square attack on images x (B, H, W, C) with labels y (B,).

  Returns (x_adv, fooled): x_adv (B, H, W, C) is the highest-margin point found (the first
  misclassified one where fooled) and fooled (B,) bool says it is misclassified. Costs at most
  n_queries + 1 forward passes; n_queries and p_init are static, eps may be traced.
  """
  batch, height, width, channels = x.shape
  start_rng, rng = jax.random.split(rng)
  x_best = jnp.clip(x + eps * _random_signs(start_rng, (batch, 1, width, channels)), 0, 1)

  def margin(x_adv):
    return losses.margin(logits_fn(x_adv), y)

  def improve(carry):
    i, x_best, best = carry
    side = _window_side(i, n_queries, p_init, height, width)
    rng_top, rng_left, rng_signs = jax.random.split(jax.random.fold_in(rng, i), 3)
    top = jax.random.randint(rng_top, (batch, 1), 0, height - side + 1)
    left = jax.random.randint(rng_left, (batch, 1), 0, width - side + 1)
    rows = (jnp.arange(height) >= top) & (jnp.arange(height) < top + side)  # (B, H)
    cols = (jnp.arange(width) >= left) & (jnp.arange(width) < left + side)  # (B, W)
    window = rows[:, :, None, None] & cols[:, None, :, None]
    signs = _random_signs(rng_signs, (batch, 1, 1, channels))
    x_new = jnp.where(window, jnp.clip(x + eps * signs, 0, 1), x_best)
    new = margin(x_new)
    accept = (new > best) & (best <= 0)
    return (i + 1, jnp.where(accept[:, None, None, None], x_new, x_best),
            jnp.where(accept, new, best))

  def searching(carry):
    i, _, best = carry
    return (i < n_queries) & jnp.any(best <= 0)

  _, x_best, best = jax.lax.while_loop(searching, improve, (0, x_best, margin(x_best)))
  return x_best, best > 0
