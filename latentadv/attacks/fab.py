"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"), targeted, L-inf or L2: it looks for the adversarial point closest to x in
the norm ('linf' or 'l2').

Per example, the target t is the k-th most likely class other than the label y at x. Each
step linearises g = z_t - z_y at the iterate x_k (one forward-backward pass), takes the
minimal-norm steps d_k from x_k and d_0 from x onto the hyperplane
{z: g(x_k) + <grad g(x_k), z - x_k> = 0} inside the box [0, 1] (`project_linf`,
`project_l2`), and moves to

  x_k+1 = clip((1 - a) (x_k + eta d_k) + a (x + eta d_0), 0, 1),
  a = min(|d_k| / (|d_k| + |d_0|), alpha_max)  (|.| the norm),

overshooting the hyperplane by eta and biased towards x by a. If x_k+1 is misclassified (one
forward pass) it is kept when closer to x than the best so far, and the iterate moves back
towards x: x_k+1 <- x + beta (x_k+1 - x). AutoAttack's settings are the defaults: eta 1.05,
beta 0.9, alpha_max 0.1, 100 steps, 9 targets, 1 restart.

Unlike AutoAttack's code, a point misclassified at x gets norm 0 (AutoAttack does not attack
it), and `fab_targeted` carries the best norm over all its runs, so a random restart starts
at distance min(best norm, eps) / 2 (AutoAttack forgets it between runs: always eps / 2, as
`fab_targeted_run`'s random start). A random start's direction is t / |t|, t uniform in
[-1, 1]^(H, W, C) (L-inf) or standard normal (L2), as in AutoAttack.

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K); step counts and the norm
are Python values (static under jit), eps (which only sets the random starts) may be traced.

Loops: as in attacks/apgd.py, `fab_targeted_run` rolls its steps unless `unroll` is True
(attacks/loops.py), and `fab_targeted` loops over its targets with a rolled loop.

Declared attack (attacks/attack.py), settings config.eval.fab: `FAB_T`, `restarts` runs
towards each of the `targets` most likely other classes, `steps` steps each; an example is
fooled only if the point found is within eps and misclassified once re-evaluated, and the
evaluator keeps the smallest norm found per example (fab_linf_norm or fab_l2_norm).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.attacks import attack
from latentadv.attacks import norms
from latentadv.attacks.pgd import LogitsFn

_ALPHA_MAX = 0.1
_ETA = 1.05
_BETA = 0.9


def linf_norm(delta: jax.Array) -> jax.Array:
  """max |delta| over all but the first axis of delta (B, ...); returns (B,)."""
  return norms.per_example(delta, 'linf')


def _toward_hyperplane(points: jax.Array, w: jax.Array, b: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(|gap| (B,), direction (B, N), room (B, N)) for points (B, N) in [0, 1] and the
  hyperplane <w, z> = b (w (B, N), b (B,)): gap = <w, points> - b, direction the sign of
  each coordinate's move that shrinks |gap| (0 where w_i = 0), room its distance to the
  box's edge that way."""
  gap = jnp.sum(w * points, axis=-1) - b
  direction = jnp.where(gap >= 0, -1.0, 1.0)[:, None] * jnp.sign(w)
  room = jnp.where(direction > 0, 1.0 - points, points)
  return jnp.abs(gap), direction, room


def _reach(gap: jax.Array, limit: jax.Array, weight: jax.Array) -> jax.Array:
  """(B, 1): the smallest lam >= 0 with h(lam) = sum_i weight_i min(lam, limit_i) = gap (B,),
  for limit and weight (B, N) >= 0; inf where h stays below gap.

  h is piecewise linear and increasing, with kinks at the sorted limits, so its value at each
  kink comes from cumulative sums and lam is linear between two kinks: exact, no search.
  """
  limit_sorted, weight_sorted = jax.lax.sort((limit, weight), num_keys=1)
  # At lam = limit_sorted[k], the coordinates up to k are saturated (they add `saturated`)
  # and the others still grow with lam (they add lam * `free`).
  saturated = jnp.cumsum(weight_sorted * limit_sorted, axis=-1)
  free = weight.sum(axis=-1, keepdims=True) - jnp.cumsum(weight_sorted, axis=-1)
  h_at_kinks = saturated + limit_sorted * free
  # The first kink where h reaches gap (N if none); h is linear from the kink before it.
  kink = jnp.sum(h_at_kinks < gap[:, None], axis=-1, keepdims=True)
  saturated = jnp.pad(saturated, ((0, 0), (1, 0)))
  free = jnp.concatenate([weight.sum(axis=-1, keepdims=True), free], axis=-1)
  saturated, free = (jnp.take_along_axis(a, kink, axis=-1) for a in (saturated, free))
  lam = jnp.where(free > 0, (gap[:, None] - saturated) / jnp.where(free > 0, free, 1), 0.0)
  return jnp.where(kink < limit.shape[-1], lam, jnp.inf)


def project_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The smallest-L-inf step d (B, N) that moves points (B, N) in [0, 1] onto the hyperplane
  <w, z> = b (w (B, N), b (B,)) while keeping points + d in [0, 1].

  Moving coordinate i by at most lam towards the hyperplane (opposite to sign(w_i) when
  <w, points> > b) shifts <w, z> by up to h(lam) = sum_i |w_i| min(lam, room_i), room_i the
  distance to the box's edge in that direction; lam solves h(lam) = |<w, points> - b|
  (`_reach`). Where the box keeps the hyperplane out of reach, d is the box corner that gets
  closest to it. Coordinates with w_i = 0 do not move.
  """
  gap, direction, room = _toward_hyperplane(points, w, b)
  lam = _reach(gap, room, jnp.abs(w))
  return direction * jnp.minimum(lam, room)


def project_l2(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The smallest-L2 step d (B, N) that moves points (B, N) in [0, 1] onto the hyperplane
  <w, z> = b (w (B, N), b (B,)) while keeping points + d in [0, 1] (AutoAttack's
  `projection_l2`, solved as `project_linf` is).

  The minimal step moves coordinate i by min(lam |w_i|, room_i) towards the hyperplane (the
  unconstrained minimal-L2 step is parallel to w; the box stops each coordinate at its edge),
  which shifts <w, z> by h(lam) = sum_i w_i^2 min(lam, room_i / |w_i|); lam solves
  h(lam) = |<w, points> - b| (`_reach`). Where the box keeps the hyperplane out of reach, d
  is the box corner that gets closest to it. Coordinates with |w_i| <= 1e-8 do not move (as
  in AutoAttack).
  """
  gap, direction, room = _toward_hyperplane(points, w, b)
  weight = jnp.abs(w)
  moves = weight > 1e-8
  limit = jnp.where(moves, room / jnp.where(moves, weight, 1.0), 0.0)
  lam = _reach(gap, limit, jnp.where(moves, weight * weight, 0.0))
  return jnp.where(moves, direction * jnp.minimum(lam * weight, room), 0.0)


PROJECTIONS = {'linf': project_linf, 'l2': project_l2}


class _State(NamedTuple):
  x_k: jax.Array  # (B, H, W, C) current iterate.
  x_best: jax.Array  # (B, H, W, C) closest misclassified iterate so far (x if none).
  best: jax.Array  # (B,) its distance to x in the attack's norm (inf if none).


def _run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, target_class: jax.Array,
         s: _State, steps: int, unroll: bool, norm: str) -> _State:
  """`steps` FAB steps from s.x_k towards class target_class (B,), keeping the closest
  misclassified iterate in the `norm` in s.x_best / s.best."""
  batch = x.shape[0]
  to_hyperplane = PROJECTIONS[norm]
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
    d_k = to_hyperplane(s.x_k.reshape(batch, -1), w, b).reshape(x.shape)
    d_0 = to_hyperplane(x.reshape(batch, -1), w, b).reshape(x.shape)
    norm_k, norm_0 = (jnp.maximum(norms.per_example(d, norm), 1e-8) for d in (d_k, d_0))
    alpha = jnp.minimum(norm_k / (norm_k + norm_0), _ALPHA_MAX)[:, None, None, None]
    x_next = jnp.clip((1 - alpha) * (s.x_k + _ETA * d_k) + alpha * (x + _ETA * d_0), 0.0, 1.0)
    wrong = logits_fn(x_next).argmax(axis=-1) != y
    distance = norms.per_example(x_next - x, norm)
    better = wrong & (distance < s.best)
    return _State(x_k=where(wrong, x + _BETA * (x_next - x), x_next),
                  x_best=where(better, x_next, s.x_best),
                  best=jnp.where(better, distance, s.best))

  return jax.lax.fori_loop(0, steps, body, s, unroll=unroll)


def _random_start(rng: jax.Array, x: jax.Array, radius: jax.Array, norm: str) -> jax.Array:
  """x + radius * t / |t| per example (radius (B,), |.| the `norm`), clipped to [0, 1], for t
  uniform in [-1, 1]^(H, W, C) (L-inf) or standard normal (L2)."""
  if norm == 'linf':
    t = jax.random.uniform(rng, x.shape, x.dtype, -1, 1)
  else:
    t = jax.random.normal(rng, x.shape, x.dtype)
  length = norms.per_example(t, norm, keepdims=True)
  return jnp.clip(x + radius[:, None, None, None] * t / length, 0.0, 1.0)


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
                     random_start: bool | jax.Array = False, unroll: bool = False,
                     norm: str = 'linf') -> tuple[jax.Array, jax.Array]:
  """One FAB-T run on images x (B, H, W, C), labels y (B,), towards each example's
  `target`-th (0-based; may be traced) most likely class other than y, minimising the
  `norm` ('linf' or 'l2') of the perturbation.

  Starts at x, or (random_start, may be traced) at a random point at distance eps / 2
  (clipped to [0, 1]), as AutoAttack's restarts after the first. Returns (x_adv, distance):
  x_adv (B, H, W, C) the misclassified iterate closest to x (x itself where x is
  misclassified, distance 0; x where none was found, distance inf), distance (B,) its
  `norm` distance to x. Costs steps forward-backward and steps + 1 forward passes.
  """
  clean = logits_fn(x)
  radius = jnp.where(random_start, eps / 2, 0.0) * jnp.ones(y.shape, x.dtype)
  s = _clean_state(clean, x, y)._replace(x_k=_random_start(rng, x, radius, norm))
  s = _run(logits_fn, x, y, _target_classes(clean, y, target), s, steps, unroll, norm)
  return s.x_best, s.best


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                 eps: float, steps: int = 100, num_targets: int = 9, restarts: int = 1,
                 norm: str = 'linf') -> tuple[jax.Array, jax.Array]:
  """FAB-T on images x (B, H, W, C), labels y (B,) in the `norm`: `restarts` runs towards
  each of the `num_targets` most likely other classes, every example attacked in every run.

  Restart 0 of each target starts at x, restart r > 0 at a random point (key fold_in(rng,
  target * restarts + r)) at distance min(best distance so far, eps) / 2. Returns (x_adv,
  distance) as `fab_targeted_run`, the closest over all runs: the minimal perturbation
  found. The targets are a rolled loop, the steps too.
  """
  clean = logits_fn(x)

  def target_runs(t, s):
    target_class = _target_classes(clean, y, t)
    for r in range(restarts):
      start = x if r == 0 else _random_start(jax.random.fold_in(rng, t * restarts + r), x,
                                             jnp.minimum(s.best, eps) / 2, norm)
      s = _run(logits_fn, x, y, target_class, s._replace(x_k=start), steps, False, norm)
    return s

  s = jax.lax.fori_loop(0, num_targets, target_runs, _clean_state(clean, x, y))
  return s.x_best, s.best


def fooled_within(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, x_adv: jax.Array,
                  eps: float, norm: str = 'linf') -> jax.Array:
  """(B,) bool: x_adv (B, H, W, C) is within `norm` distance eps of x and misclassified once
  projected onto the eps-ball around x and [0, 1] (which moves such a point by rounding at
  most), i.e. the point the model is re-evaluated on is certainly an eps-perturbation."""
  wrong = logits_fn(norms.project(x_adv, x, eps, norm)).argmax(axis=-1) != y
  return wrong & (norms.per_example(x_adv - x, norm) <= eps)


def default_config() -> ml_collections.ConfigDict:
  """FAB-T's settings (config.eval.fab), AutoAttack's standard values: steps per run, runs
  per target (restarts after the first start randomly) and target classes."""
  return ml_collections.ConfigDict(dict(steps=100, restarts=1, targets=9))


def _build(settings: ml_collections.ConfigDict, *, eps: float, norm: str, unroll: bool,
           straight_through: bool) -> attack.Attack:
  """FAB-T, `restarts` runs per target, as an evaluator's Attack that also reports norms."""
  steps, restarts = settings.steps, settings.restarts

  def fooled(logits_fn, x, y, rng, run):
    x_adv, distance = fab_targeted_run(logits_fn, x, y, rng, run // restarts, eps=eps,
                                       steps=steps, random_start=run % restarts > 0,
                                       norm=norm, unroll=unroll)
    return fooled_within(logits_fn, x, y, x_adv, eps, norm), distance
  return attack.Attack('fab-t', settings.targets * restarts, fooled,
                       dict(steps=steps, targets=settings.targets, restarts=restarts,
                            norm=norm, unrolled=unroll), straight_through,
                       norm_key=f'fab_{norm}_norm')


FAB_T = attack.Declaration('fab-t', 'fab', default_config, _build)
