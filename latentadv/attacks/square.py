"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L-inf or L2: score-based, it never takes a gradient.

Each query changes a random square window (its own position per example) of every
not-yet-fooled example and keeps the change if the margin loss (losses.margin) rises. The
window covers a fraction p of the image: p_init, halved after 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 of 10,000 queries (the paper's schedule, rescaled to n_queries).

L-inf: starting from vertical stripes of +-eps, a query sets the window to x +- eps, one
random sign per channel (the paper's +-2 eps update, projected).

L2 (AutoAttack's L2 branch): the start is a grid of 5 x 5 tiles of side H // 5, each holding
the pattern eta (below) times a random sign per channel, the whole scaled to L2 norm eps. A
query draws two windows of odd side (at least 3) and, per channel, moves the perturbation's
mass in both into the first: the first window's new content is eta times a random sign plus
its old content scaled to unit norm, rescaled to the old content's norm over both windows
plus an equal share (per channel) of the unused budget eps^2 - ||delta||^2; the second
window (outside the first) is cleared. The perturbation is then rescaled to norm eps and the
point clipped to [0, 1] (attacks/norms.py: the projection). eta (s, s) is a sum of
concentric rectangles weighted 1 / (k + 1)^2 (k = 0, 1, ... from the centre out) on the top
s // 2 rows, minus the same on the other rows, at unit norm, transposed with probability 1/2.

Deviations from AutoAttack's L2 code: each example draws its own window positions and its
own transposition of eta (AutoAttack draws them once per query for the whole batch), as the
L-inf version does; start tiles that pass the image's edge are cut there (AutoAttack's code
fails on such images, e.g. below 25 x 25 pixels).

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K). The queries are a rolled
`while_loop`, which ends early once every example is fooled.

Declared attack (attacks/attack.py), settings config.eval.square: `SQUARE`, one run of
`queries` queries with window fraction `p_init`.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from latentadv.attacks import attack
from latentadv.attacks import losses
from latentadv.attacks import norms
from latentadv.attacks.pgd import LogitsFn

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # Out of 10,000 queries.
_TINY = 1e-12  # Guards divisions by a zero norm (AutoAttack's constant).


def _window_side(i: jax.Array, n_queries: int, p_init: float, height: int, width: int,
                 norm: str) -> jax.Array:
  """Side of the square window at query i: round(sqrt(p * H * W)), at most min(H, W) and at
  least 1 (L-inf) or odd and at least 3 (L2)."""
  progress = i * 10_000 // n_queries
  p = p_init / 2.0 ** jnp.sum(progress > jnp.array(_HALVINGS))
  side = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  if norm == 'l2':
    side = jnp.maximum(side, 3)
    side += 1 - side % 2
  return jnp.clip(side, 1, min(height, width))


def _random_signs(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform random +-1.0 of the given shape."""
  return jnp.where(jax.random.bernoulli(rng, 0.5, shape), 1.0, -1.0)


def _window(rng_top: jax.Array, rng_left: jax.Array, side: jax.Array,
            shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(rows (B, H), cols (B, W)): each pixel's row and column relative to the top-left corner
  of a side x side window at a uniformly random position per example, for images of `shape`
  (B, H, W, C)."""
  batch, height, width, _ = shape
  top = jax.random.randint(rng_top, (batch, 1), 0, height - side + 1)
  left = jax.random.randint(rng_left, (batch, 1), 0, width - side + 1)
  return jnp.arange(height) - top, jnp.arange(width) - left


def _inside(rows: jax.Array, cols: jax.Array, side: jax.Array) -> jax.Array:
  """(B, H, W, 1) bool: the pixels of the window whose relative rows (B, H) and cols (B, W)
  `_window` gave."""
  return (((rows >= 0) & (rows < side))[:, :, None, None]
          & ((cols >= 0) & (cols < side))[:, None, :, None])


def _linf_start(rng: jax.Array, x: jax.Array, eps) -> jax.Array:
  """x (B, H, W, C) plus vertical stripes of +-eps (a sign per column and channel), clipped."""
  batch, _, width, channels = x.shape
  return jnp.clip(x + eps * _random_signs(rng, (batch, 1, width, channels)), 0, 1)


def _linf_query(rng: jax.Array, x: jax.Array, x_best: jax.Array, side: jax.Array, eps
                ) -> jax.Array:
  """x_best (B, H, W, C) with a random window set to x +- eps (a sign per channel), clipped."""
  rng_top, rng_left, rng_signs = jax.random.split(rng, 3)
  window = _inside(*_window(rng_top, rng_left, side, x.shape), side)
  signs = _random_signs(rng_signs, (x.shape[0], 1, 1, x.shape[-1]))
  return jnp.where(window, jnp.clip(x + eps * signs, 0, 1), x_best)


def _rectangles(height: int, width: int) -> np.ndarray:
  """(height, width), unit L2 norm: concentric rectangles around (height // 2, width // 2),
  the k-th (half-side k, k = 0 .. max(height, width) // 2) weighted 1 / (k + 1)^2. Entry
  (i, j) sums the weights from its Chebyshev distance to the centre on."""
  distance = np.maximum(np.abs(np.arange(height)[:, None] - height // 2),
                        np.abs(np.arange(width)[None, :] - width // 2))
  weights = 1.0 / np.arange(1, max(height, width) // 2 + 2) ** 2
  pattern = np.cumsum(weights[::-1])[::-1][distance]
  return pattern / max(np.linalg.norm(pattern), _TINY)


def _eta(side: int) -> np.ndarray:
  """(side, side), unit L2 norm: _rectangles on the top side // 2 rows, minus on the rest."""
  half = side // 2
  pattern = np.concatenate([_rectangles(half, side), -_rectangles(side - half, side)])
  return pattern / np.linalg.norm(pattern)


def _eta_table(size: int) -> np.ndarray:
  """(size + 1, size, size) float32: [s, :s, :s] is _eta(s), zero elsewhere."""
  table = np.zeros((size + 1, size, size), np.float32)
  for side in range(1, size + 1):
    table[side, :side, :side] = _eta(side)
  return table


def _l2_point(x: jax.Array, delta: jax.Array, eps) -> jax.Array:
  """x + eps * delta / ||delta||_2 per example (x, delta (B, H, W, C)), clipped to [0, 1]."""
  return norms.project(x + eps * norms.steepest_direction(delta, 'l2'), x, eps, 'l2')


def _l2_start(rng: jax.Array, x: jax.Array, eps) -> jax.Array:
  """AutoAttack's L2 start for x (B, H, W, C): the tiles of side H // 5 from
  ((H - 5 side) // 2, the same) on, each eta times a random sign per channel, at norm eps."""
  batch, height, width, channels = x.shape
  side = height // 5
  first = (height - 5 * side) // 2
  canvas = np.zeros((height + side, width + side))
  tiles = []
  for top in range(first, first + height // side * side, side):
    for left in range(first, first + width // side * side, side):
      canvas[:] = 0
      canvas[top:top + side, left:left + side] = _eta(side)
      tiles.append(canvas[:height, :width].copy())
  signs = _random_signs(rng, (batch, len(tiles), channels))
  delta = jnp.einsum('thw,btc->bhwc', jnp.asarray(np.stack(tiles), x.dtype), signs)
  return _l2_point(x, delta, eps)


def _place(eta: jax.Array, rows: jax.Array, cols: jax.Array, transpose: jax.Array
           ) -> jax.Array:
  """(B, H, W, 1): pixel (i, j) of example b gets eta[rows[b, i], cols[b, j]] (eta (S, S),
  transposed where transpose (B,) bool), indices clipped to [0, S): eta at each example's
  window where rows (B, H), cols (B, W) come from `_window` (mask the rest)."""
  size = eta.shape[0]
  patterns = jnp.where(transpose[:, None, None], eta.T, eta)  # (B, S, S)
  rows, cols = (jnp.clip(a, 0, size - 1) for a in (rows, cols))
  examples = jnp.arange(len(patterns))[:, None, None]
  return patterns[examples, rows[:, :, None], cols[:, None, :]][..., None]


def _l2_query(rng: jax.Array, x: jax.Array, x_best: jax.Array, side: jax.Array, eps,
              eta_table: jax.Array) -> jax.Array:
  """AutoAttack's L2 update of x_best (B, H, W, C) in a random window of side `side`, with a
  second window's mass moved into it (see the module docstring); eta_table from _eta_table."""
  batch, channels = x.shape[0], x.shape[-1]
  rngs = jax.random.split(rng, 6)
  rows, cols = _window(rngs[0], rngs[1], side, x.shape)
  first = _inside(rows, cols, side)
  both = first | _inside(*_window(rngs[2], rngs[3], side, x.shape), side)
  delta = x_best - x

  def window_norm(v, window):  # (B, 1, 1, C)
    return jnp.sqrt(jnp.sum(jnp.where(window, v, 0.0) ** 2, axis=(1, 2), keepdims=True))

  unused = jnp.maximum(eps ** 2 - norms.per_example(delta, 'l2', keepdims=True) ** 2, 0.0)
  budget = jnp.sqrt(unused / channels + window_norm(delta, both) ** 2)
  eta = _place(eta_table[side], rows, cols, jax.random.bernoulli(rngs[4], 0.5, (batch,)))
  new = (jnp.where(first, eta, 0.0) * _random_signs(rngs[5], (batch, 1, 1, channels))
         + jnp.where(first, delta, 0.0) / (window_norm(delta, first) + _TINY))
  new *= budget / (window_norm(new, first) + _TINY)
  return _l2_point(x, jnp.where(first, new, jnp.where(both, 0.0, delta)), eps)


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
           n_queries: int = 5000, p_init: float = 0.8, norm: str = 'linf'
           ) -> tuple[jax.Array, jax.Array]:
  """Untargeted Square attack on images x (B, H, W, C) with labels y (B,) in the `norm`
  eps-ball ('linf' or 'l2').

  Returns (x_adv, fooled): x_adv (B, H, W, C) is the highest-margin point found (the first
  misclassified one where fooled) and fooled (B,) bool says it is misclassified. Costs at most
  n_queries + 1 forward passes; n_queries, p_init and norm are static, eps may be traced.
  """
  _, height, width, _ = x.shape
  start_rng, rng = jax.random.split(rng)
  if norm == 'linf':
    x_best = _linf_start(start_rng, x, eps)
    query = functools.partial(_linf_query, eps=eps)
  else:
    x_best = _l2_start(start_rng, x, eps)
    query = functools.partial(_l2_query, eps=eps,
                              eta_table=jnp.asarray(_eta_table(min(height, width))))

  def margin(x_adv):
    return losses.margin(logits_fn(x_adv), y)

  def improve(carry):
    i, x_best, best = carry
    side = _window_side(i, n_queries, p_init, height, width, norm)
    x_new = query(jax.random.fold_in(rng, i), x, x_best, side)
    new = margin(x_new)
    accept = (new > best) & (best <= 0)
    return (i + 1, jnp.where(accept[:, None, None, None], x_new, x_best),
            jnp.where(accept, new, best))

  def searching(carry):
    i, _, best = carry
    return (i < n_queries) & jnp.any(best <= 0)

  _, x_best, best = jax.lax.while_loop(searching, improve, (0, x_best, margin(x_best)))
  return x_best, best > 0


def default_config() -> ml_collections.ConfigDict:
  """The Square attack's settings (config.eval.square), AutoAttack's standard values."""
  return ml_collections.ConfigDict(dict(queries=5000, p_init=0.8))


def _build(settings: ml_collections.ConfigDict, *, eps: float, norm: str, unroll: bool,
           straight_through: bool) -> attack.Attack:
  """One Square run as an evaluator's Attack; it takes no gradients, so it has no step loop
  to unroll and no surrogate to differentiate."""
  del unroll, straight_through
  queries, p_init = settings.queries, settings.p_init

  def fooled(logits_fn, x, y, rng, run):
    del run
    return square(logits_fn, x, y, rng, eps=eps, n_queries=queries, p_init=p_init,
                  norm=norm)[1]
  return attack.Attack('square', 1, fooled, dict(queries=queries, p_init=p_init, norm=norm))


SQUARE = attack.Declaration('square', 'square', default_config, _build,
                            uses_gradients=False)
