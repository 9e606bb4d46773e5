"""APGD and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L-inf or L2.

PGD without a step-size parameter: steepest-ascent steps with momentum (weight 0.75 on the new
step), of size 2 eps at first, per example. At checkpoints after 22, 41, 57, 70, 80, 87, 93,
99 % of the steps (intervals shrinking by 3 % to at least 6 %), an example halves its step
and restarts from its best point when fewer than 75 % of the steps since the last checkpoint
raised its loss, or when neither its step size nor its best loss changed over the interval.
The steps are step * sign(grad) for L-inf and step * grad / ||grad||_2 for L2 (AutoAttack's
L2 branch), projected onto the eps-ball of the norm and [0, 1] (attacks/norms.py) before and
after the momentum term.

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K); the step count, loss
name and norm ('linf' or 'l2') are Python values (static under jit), eps may be traced.

Loops: `apgd` and `apgd_targeted_run` roll their steps unless `unroll` is True
(attacks/loops.py says why). `apgd_targeted` loops over its targets with a rolled loop, its
steps rolled; the Evaluator instead runs one jitted `apgd_targeted_run` per target from the
host, so that each target attacks only the points still robust.

Declared attacks (attacks/attack.py), settings config.eval.apgd: `APGD_CE`, APGD with
cross-entropy (`steps`, `restarts`), and `APGD_T`, APGD-T with the targeted DLR loss, one run
per target (`steps`, `targets`).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from latentadv.attacks import attack
from latentadv.attacks import losses
from latentadv.attacks import norms
from latentadv.attacks.pgd import LogitsFn

_ALPHA = 0.75  # Weight of the new step; 1 - _ALPHA goes to the previous one (momentum).
_RHO = 0.75


class _State(NamedTuple):
  x_adv: jax.Array  # (B, H, W, C) current iterate.
  x_prev: jax.Array  # (B, H, W, C) previous iterate, for the momentum term.
  grad: jax.Array  # (B, H, W, C) loss gradient at x_adv.
  loss: jax.Array  # (B,) loss at the last evaluated iterate.
  step: jax.Array  # (B,) step size.
  x_best: jax.Array  # (B, H, W, C) highest-loss point so far, its loss and gradient.
  best: jax.Array
  grad_best: jax.Array
  x_fool: jax.Array  # (B, H, W, C) the last misclassified iterate (where `fooled`).
  fooled: jax.Array  # (B,) bool: some iterate was misclassified.
  successes: jax.Array  # (B,) steps that raised the loss since the last checkpoint.
  best_at_check: jax.Array  # (B,) best loss at the last checkpoint.
  halved_at_check: jax.Array  # (B,) bool: the step was halved at the last checkpoint.


def _checkpoint_intervals(steps: int) -> np.ndarray:
  """(steps + 1,) int: [i] is the length of the interval ending after step i (0 = no check)."""
  length, shrink, shortest = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
  intervals = np.zeros(steps + 1, np.int32)
  end = length
  while end <= steps:
    intervals[end] = length
    length = max(length - shrink, shortest)
    end += length
  return intervals


def _run(logits_fn: LogitsFn, loss_fn: Callable, x: jax.Array, y: jax.Array,
         x_start: jax.Array, eps: float, steps: int, unroll: bool, norm: str
         ) -> tuple[jax.Array, jax.Array]:
  """One APGD run from x_start maximising loss_fn(logits) (B,); returns (x_adv, fooled)."""
  intervals = jnp.asarray(_checkpoint_intervals(steps))

  def where(mask, a, b):
    return jnp.where(mask.reshape(-1, *[1] * (a.ndim - 1)), a, b)

  def objective(x_adv):
    logits = logits_fn(x_adv)
    loss = loss_fn(logits)
    return loss.sum(), (loss, logits.argmax(-1) != y)

  grad_fn = jax.grad(objective, has_aux=True)

  def body(i, s):
    alpha = jnp.where(i == 0, 1.0, _ALPHA)  # The first step has no history.
    direction = norms.steepest_direction(s.grad, norm)
    z = norms.project(s.x_adv + s.step[:, None, None, None] * direction, x, eps, norm)
    x_adv = norms.project(
        s.x_adv + alpha * (z - s.x_adv) + (1 - alpha) * (s.x_adv - s.x_prev), x, eps, norm)
    grad, (loss, wrong) = grad_fn(x_adv)
    improved = loss > s.best
    best = jnp.where(improved, loss, s.best)
    x_best = where(improved, x_adv, s.x_best)
    grad_best = where(improved, grad, s.grad_best)
    successes = s.successes + (loss > s.loss)
    interval = intervals[i + 1]
    check = interval > 0
    halve = check & ((successes < _RHO * interval)
                     | ~s.halved_at_check & (best <= s.best_at_check))
    return _State(
        x_adv=where(halve, x_best, x_adv), x_prev=s.x_adv,
        grad=where(halve, grad_best, grad), loss=loss,
        step=jnp.where(halve, s.step / 2, s.step),
        x_best=x_best, best=best, grad_best=grad_best,
        x_fool=where(wrong, x_adv, s.x_fool), fooled=s.fooled | wrong,
        successes=jnp.where(check, 0, successes),
        best_at_check=jnp.where(check, best, s.best_at_check),
        halved_at_check=jnp.where(check, halve, s.halved_at_check))

  grad, (loss, wrong) = grad_fn(x_start)
  s = _State(x_adv=x_start, x_prev=x_start, grad=grad, loss=loss,
             step=jnp.full(loss.shape, 2 * eps, x.dtype), x_best=x_start, best=loss,
             grad_best=grad, x_fool=x_start, fooled=wrong,
             successes=jnp.zeros(loss.shape, jnp.int32), best_at_check=loss,
             halved_at_check=jnp.ones(loss.shape, bool))
  s = jax.lax.fori_loop(0, steps, body, s, unroll=unroll)
  return where(s.fooled, s.x_fool, s.x_best), s.fooled


def _start(rng: jax.Array, x: jax.Array, eps: float, random_start: bool, norm: str
           ) -> jax.Array:
  """x, or x + eps * t / |t| clipped to [0, 1], per example, with |.| the `norm` and t
  uniform in [-1, 1]^(H, W, C) for L-inf, standard normal for L2 (AutoAttack's starts)."""
  if not random_start:
    return x
  if norm == 'linf':
    t = jax.random.uniform(rng, x.shape, x.dtype, -1, 1)
  else:
    t = jax.random.normal(rng, x.shape, x.dtype)
  t /= norms.per_example(t, norm, keepdims=True)
  return jnp.clip(x + eps * t, 0.0, 1.0)


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
         steps: int = 100, loss: str = 'ce', random_start: bool = True,
         unroll: bool = False, norm: str = 'linf') -> tuple[jax.Array, jax.Array]:
  """Untargeted APGD on images x (B, H, W, C) with labels y (B,), maximising losses.LOSSES[loss]
  in the `norm` eps-ball.

  Returns (x_adv, fooled): fooled (B,) bool says some iterate (the start included) was
  misclassified, and x_adv (B, H, W, C) is then such an iterate, else the highest-loss one.
  Costs steps + 1 forward-backward passes.
  """
  loss_fn = losses.LOSSES[loss]
  return _run(logits_fn, lambda logits: loss_fn(logits, y), x, y,
              _start(rng, x, eps, random_start, norm), eps, steps, unroll, norm)


def apgd_targeted_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array,
                      target: int | jax.Array, *, eps: float, steps: int = 100,
                      random_start: bool = True, unroll: bool = False,
                      norm: str = 'linf') -> tuple[jax.Array, jax.Array]:
  """One APGD-T run on images x (B, H, W, C), labels y (B,), maximising losses.targeted_dlr
  in the `norm` eps-ball.

  Each example's target is its `target`-th (0-based; may be traced) highest clean logit among
  the classes other than y. Returns (x_adv, fooled) as `apgd`: fooled means misclassified
  (as any class). Costs steps + 1 forward-backward passes and one forward pass.
  """
  clean = logits_fn(x)
  others = jnp.where(jax.nn.one_hot(y, clean.shape[-1], dtype=bool), -jnp.inf, clean)
  target_class = jnp.argsort(-others, axis=-1)[:, target]
  return _run(logits_fn, lambda logits: losses.targeted_dlr(logits, y, target_class), x, y,
              _start(rng, x, eps, random_start, norm), eps, steps, unroll, norm)


def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                  eps: float, steps: int = 100, num_targets: int = 9,
                  random_start: bool = True, norm: str = 'linf'
                  ) -> tuple[jax.Array, jax.Array]:
  """APGD-T on images x (B, H, W, C), labels y (B,): `apgd_targeted_run` for targets 0, 1, ...

  Run t targets the t-th most likely other class and starts from fold_in(rng, t). Returns
  (x_adv, fooled) as `apgd`: x_adv is the first fooling run's misclassified point where
  fooled, else the last run's best point. The runs are a rolled loop; on XLA:CPU it is faster
  to jit `apgd_targeted_run` once and loop over the targets outside (stopping early once every
  example is fooled).
  """
  def run(t, carry):
    x_adv, fooled = carry
    x_run, fooled_run = apgd_targeted_run(
        logits_fn, x, y, jax.random.fold_in(rng, t), t, eps=eps, steps=steps,
        random_start=random_start, unroll=False, norm=norm)
    return jnp.where(fooled[:, None, None, None], x_adv, x_run), fooled | fooled_run

  return jax.lax.fori_loop(0, num_targets, run, (x, jnp.zeros(y.shape, bool)))


def default_config() -> ml_collections.ConfigDict:
  """APGD-CE's and APGD-T's settings (config.eval.apgd), AutoAttack's standard values:
  iterations per run, APGD-CE restarts and APGD-T target classes (one run each)."""
  return ml_collections.ConfigDict(dict(steps=100, restarts=1, targets=9))


def _build_ce(settings: ml_collections.ConfigDict, *, eps: float, norm: str, unroll: bool,
              straight_through: bool) -> attack.Attack:
  """APGD-CE, `restarts` runs, as an evaluator's Attack."""
  steps = settings.steps

  def fooled(logits_fn, x, y, rng, run):
    del run
    return apgd(logits_fn, x, y, rng, eps=eps, steps=steps, loss='ce', norm=norm,
                unroll=unroll)[1]
  return attack.Attack('apgd-ce', settings.restarts, fooled,
                       dict(steps=steps, restarts=settings.restarts, loss='ce', norm=norm,
                            unrolled=unroll), straight_through)


def _build_targeted(settings: ml_collections.ConfigDict, *, eps: float, norm: str,
                    unroll: bool, straight_through: bool) -> attack.Attack:
  """APGD-T, one run per target, as an evaluator's Attack."""
  steps = settings.steps

  def fooled(logits_fn, x, y, rng, run):
    return apgd_targeted_run(logits_fn, x, y, rng, run, eps=eps, steps=steps, norm=norm,
                             unroll=unroll)[1]
  return attack.Attack('apgd-t', settings.targets, fooled,
                       dict(steps=steps, targets=settings.targets, loss='targeted_dlr',
                            norm=norm, unrolled=unroll), straight_through)


APGD_CE = attack.Declaration('apgd-ce', 'apgd', default_config, _build_ce)
APGD_T = attack.Declaration('apgd-t', 'apgd', default_config, _build_targeted)
