"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"), targeted, L-inf: it looks for the adversarial point closest to x.

Per example, the target t is the k-th most likely class other than the label y at x. Each
step linearises g = z_t - z_y at the iterate x_k (one forward-backward pass), takes the
minimal L-inf steps d_k from x_k and d_0 from x onto the hyperplane
{z: g(x_k) + <grad g(x_k), z - x_k> = 0} inside the box [0, 1] (`project_linf`), and moves to

  x_k+1 = clip((1 - a) (x_k + eta d_k) + a (x + eta d_0), 0, 1),
  a = min(|d_k| / (|d_k| + |d_0|), alpha_max)  (|.| the L-inf norm),

overshooting the hyperplane by eta and biased towards x by a. If x_k+1 is misclassified (one
forward pass) it is kept when closer to x than the best so far, and the iterate moves back
towards x: x_k+1 <- x + beta (x_k+1 - x). AutoAttack's settings are the defaults: eta 1.05,
beta 0.9, alpha_max 0.1, 100 steps, 9 targets, 1 restart.

Unlike AutoAttack's code, a point misclassified at x gets norm 0 (AutoAttack does not attack
it), and `fab_targeted` carries the best norm over all its runs, so a random restart starts
at min(best norm, eps) / 2 (AutoAttack forgets it between runs: always eps / 2, as
`fab_targeted_run`'s random start).

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K); step counts are Python
values (static under jit), eps (which only sets the random starts) may be traced.

Loops: as in attacks/apgd.py, `fab_targeted_run` unrolls its steps by default (XLA:CPU runs
the input gradients of a conv net ~4x slower inside a while loop; `unroll=False` compiles
faster), and `fab_targeted` loops over its targets with a rolled loop, its steps rolled.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from latentadv.attacks.pgd import LogitsFn
from latentadv.attacks.pgd import project

_ALPHA_MAX = 0.1
_ETA = 1.05
_BETA = 0.9


def linf_norm(delta: jax.Array) -> jax.Array:
  """max |delta| over all but the first axis of delta (B, ...); returns (B,)."""
  return jnp.abs(delta).reshape(delta.shape[0], -1).max(axis=-1)


def project_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The smallest-L-inf step d (B, N) that moves points (B, N) in [0, 1] onto the hyperplane
  <w, z> = b (w (B, N), b (B,)) while keeping points + d in [0, 1].

  Moving coordinate i by at most lam towards the hyperplane (opposite to sign(w_i) when
  <w, points> > b) shifts <w, z> by up to h(lam) = sum_i |w_i| min(lam, room_i), room_i the
  distance to the box's edge in that direction. h is piecewise linear and increasing, with
  kinks at the sorted rooms, so its value at each kink comes from cumulative sums and the
  solution of h(lam) = |<w, points> - b| is linear between two kinks: exact, no search. Where
  the box keeps the hyperplane out of reach, d is the box corner that gets closest to it.
  Coordinates with w_i = 0 do not move.
  """
  gap = jnp.sum(w * points, axis=-1) - b
  direction = jnp.where(gap >= 0, -1.0, 1.0)[:, None] * jnp.sign(w)
  room = jnp.where(direction > 0, 1.0 - points, points)
  weight = jnp.abs(w)
  room_sorted, weight_sorted = jax.lax.sort((room, weight), num_keys=1)
  # At lam = room_sorted[k], the coordinates up to k sit on the box (they add `saturated`)
  # and the others still move with lam (they add lam * `free`).
  saturated = jnp.cumsum(weight_sorted * room_sorted, axis=-1)
  free = weight.sum(axis=-1, keepdims=True) - jnp.cumsum(weight_sorted, axis=-1)
  h_at_kinks = saturated + room_sorted * free
  # The first kink where h reaches |gap| (N if none); h is linear from the kink before it.
  kink = jnp.sum(h_at_kinks < jnp.abs(gap)[:, None], axis=-1, keepdims=True)
  saturated = jnp.pad(saturated, ((0, 0), (1, 0)))
  free = jnp.concatenate([weight.sum(axis=-1, keepdims=True), free], axis=-1)
  saturated, free = (jnp.take_along_axis(a, kink, axis=-1) for a in (saturated, free))
  lam = jnp.where(free > 0, (jnp.abs(gap)[:, None] - saturated) / jnp.where(free > 0, free, 1),
                  0.0)
  lam = jnp.where(kink < points.shape[-1], lam, jnp.inf)
  return direction * jnp.minimum(lam, room)


class _State(NamedTuple):
  x_k: jax.Array  # (B, H, W, C) current iterate.
  x_best: jax.Array  # (B, H, W, C) closest misclassified iterate so far (x if none).
  best: jax.Array  # (B,) its L-inf distance to x (inf if none).


def _run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, target_class: jax.Array,
         s: _State, steps: int, unroll: bool) -> _State:
  """`steps` FAB steps from s.x_k towards class target_class (B,), keeping the closest
  misclassified iterate in s.x_best / s.best."""
  batch = x.shape[0]
  rows = jnp.arange(batch)

  def where(mask, a, b):
    return jnp.where(mask.reshape(-1, *[1] * (a.ndim - 1)), a, b)

  def difference(x_k):
    logits = logits_fn(x_k)
    g = logits[rows, target_class] - logits[rows, y]
    return g.sum(), g

  grad_fn = jax.grad(difference, has_aux=True)

  def body(_, s):
    grad, g = grad_fn(s.x_k)
    w = grad.reshape(batch, -1)
    b = jnp.sum(w * s.x_k.reshape(batch, -1), axis=-1) - g
    d_k = project_linf(s.x_k.reshape(batch, -1), w, b).reshape(x.shape)
    d_0 = project_linf(x.reshape(batch, -1), w, b).reshape(x.shape)
    norm_k, norm_0 = (jnp.maximum(linf_norm(d), 1e-8) for d in (d_k, d_0))
    alpha = jnp.minimum(norm_k / (norm_k + norm_0), _ALPHA_MAX)[:, None, None, None]
    x_next = jnp.clip((1 - alpha) * (s.x_k + _ETA * d_k) + alpha * (x + _ETA * d_0), 0.0, 1.0)
    wrong = logits_fn(x_next).argmax(axis=-1) != y
    norm = linf_norm(x_next - x)
    better = wrong & (norm < s.best)
    return _State(x_k=where(wrong, x + _BETA * (x_next - x), x_next),
                  x_best=where(better, x_next, s.x_best), best=jnp.where(better, norm, s.best))

  return jax.lax.fori_loop(0, steps, body, s, unroll=unroll)


def _random_start(rng: jax.Array, x: jax.Array, radius: jax.Array) -> jax.Array:
  """x + radius * t / max|t| for t uniform in [-1, 1]^(H, W, C) per example, radius (B,),
  clipped to [0, 1]."""
  t = jax.random.uniform(rng, x.shape, x.dtype, -1, 1)
  return jnp.clip(x + radius[:, None, None, None] * t / linf_norm(t)[:, None, None, None],
                  0.0, 1.0)


def _target_classes(clean: jax.Array, y: jax.Array, target: int | jax.Array) -> jax.Array:
  """(B,) the `target`-th (0-based) most likely class other than y (B,) by clean logits (B, K)."""
  others = jnp.where(jax.nn.one_hot(y, clean.shape[-1], dtype=bool), -jnp.inf, clean)
  return jnp.argsort(-others, axis=-1)[:, target]


def _clean_state(clean: jax.Array, x: jax.Array, y: jax.Array) -> _State:
  """The state at x (B, H, W, C) before any step: best 0 where the clean logits (B, K)
  misclassify x already, else inf."""
  wrong = clean.argmax(axis=-1) != y
  return _State(x_k=x, x_best=x, best=jnp.where(wrong, 0.0, jnp.inf).astype(x.dtype))


def fab_targeted_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array,
                     target: int | jax.Array, *, eps: float, steps: int = 100,
                     random_start: bool | jax.Array = False, unroll: bool = True
                     ) -> tuple[jax.Array, jax.Array]:
  """One FAB-T run on images x (B, H, W, C), labels y (B,), towards each example's
  `target`-th (0-based; may be traced) most likely class other than y.

  Starts at x, or (random_start, may be traced) at a random point at L-inf distance eps / 2
  (clipped to [0, 1]), as AutoAttack's restarts after the first. Returns (x_adv, norm):
  x_adv (B, H, W, C) the misclassified iterate closest to x (x itself where x is
  misclassified, norm 0; x where none was found, norm inf), norm (B,) its L-inf distance to
  x. Costs steps forward-backward and steps + 1 forward passes; `unroll` unrolls the steps.
  """
  clean = logits_fn(x)
  radius = jnp.where(random_start, eps / 2, 0.0) * jnp.ones(y.shape, x.dtype)
  s = _clean_state(clean, x, y)._replace(x_k=_random_start(rng, x, radius))
  s = _run(logits_fn, x, y, _target_classes(clean, y, target), s, steps, unroll)
  return s.x_best, s.best


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                 eps: float, steps: int = 100, num_targets: int = 9, restarts: int = 1
                 ) -> tuple[jax.Array, jax.Array]:
  """FAB-T on images x (B, H, W, C), labels y (B,): `restarts` runs towards each of the
  `num_targets` most likely other classes, every example attacked in every run.

  Restart 0 of each target starts at x, restart r > 0 at a random point (key fold_in(rng,
  target * restarts + r)) at L-inf distance min(best norm so far, eps) / 2. Returns (x_adv,
  norm) as `fab_targeted_run`, the closest over all runs: the minimal perturbation found.
  The targets are a rolled loop, the steps too.
  """
  clean = logits_fn(x)

  def target_runs(t, s):
    target_class = _target_classes(clean, y, t)
    for r in range(restarts):
      start = x if r == 0 else _random_start(jax.random.fold_in(rng, t * restarts + r), x,
                                             jnp.minimum(s.best, eps) / 2)
      s = _run(logits_fn, x, y, target_class, s._replace(x_k=start), steps, unroll=False)
    return s

  s = jax.lax.fori_loop(0, num_targets, target_runs, _clean_state(clean, x, y))
  return s.x_best, s.best


def fooled_within(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, x_adv: jax.Array,
                  eps: float) -> jax.Array:
  """(B,) bool: x_adv (B, H, W, C) is within L-inf distance eps of x and misclassified once
  projected onto the eps-ball around x and [0, 1] (which moves such a point by rounding at
  most), i.e. the point the model is re-evaluated on is certainly an eps-perturbation."""
  wrong = logits_fn(project(x_adv, x, eps)).argmax(axis=-1) != y
  return wrong & (linf_norm(x_adv - x) <= eps)
