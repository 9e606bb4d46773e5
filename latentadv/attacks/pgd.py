"""Projected gradient descent, L-inf or L2: init + steepest ascent + projection in a fori_loop.

L-inf steps are step_size * sign(grad), L2 steps step_size * grad / ||grad||_2 per example;
each iterate is projected onto the eps-ball of the norm and [0, 1] (attacks/norms.py). The
random start is uniform in the ball.

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K). Step counts, the loss
name and the norm ('linf' or 'l2') are Python values (static under jit); eps and step_size
may be traced.

The step loop is rolled unless `unroll` is True (attacks/loops.py says why).

Declared attacks (attacks/attack.py), settings config.eval.pgd: `PGD`, PGD-k-r (k = steps,
r = restarts, step step_size x eps, loss `loss`), an example fooled if ANY iterate of any
restart is; `BPDA`, the same through the model's straight-through surrogate (for models whose
input layer masks gradients, such as the soft quantiser).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.attacks import attack
from latentadv.attacks import norms
from latentadv.attacks.losses import LOSSES

LogitsFn = Callable[[jax.Array], jax.Array]


def _init(rng: jax.Array, x: jax.Array, eps: float, random_start: bool, norm: str
          ) -> jax.Array:
  """Returns the starting point: x, or a uniform sample of the eps-ball around x, projected."""
  if not random_start:
    return x
  return norms.project(x + norms.sample_ball(rng, x.shape, x.dtype, eps, norm), x, eps, norm)


def _ascent_step(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float,
                 step_size: float, loss: str, norm: str) -> Callable:
  """Returns step(x_adv) -> (next iterate, logits at x_adv) with a single forward and backward."""
  loss_fn = LOSSES[loss]

  def objective(x_adv):
    logits = logits_fn(x_adv)
    return loss_fn(logits, y).sum(), logits

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step(x_adv):
    (_, logits), grad = grad_fn(x_adv)
    return norms.project(x_adv + step_size * norms.steepest_direction(grad, norm), x, eps,
                   norm), logits

  return step


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
        step_size: float, steps: int, random_start: bool = True, loss: str = 'ce',
        norm: str = 'linf', unroll: bool = False) -> jax.Array:
  """Returns the last PGD iterate (B, H, W, C) maximising the summed loss of labels y (B,)
  in the `norm` eps-ball around x (B, H, W, C)."""
  step = _ascent_step(logits_fn, x, y, eps, step_size, loss, norm)
  x_adv = _init(rng, x, eps, random_start, norm)
  return jax.lax.fori_loop(0, steps, lambda _, x_adv: step(x_adv)[0], x_adv,
                           unroll=unroll)


def fooled_in_restart(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *,
                      eps: float, step_size: float, steps: int, loss: str = 'ce',
                      norm: str = 'linf', unroll: bool = False) -> jax.Array:
  """Returns fooled (B,) bool: some iterate of one random-start PGD run in the `norm`
  eps-ball is misclassified.

  The random start and all `steps` iterates after it are checked. The logits of each iterate
  come from the forward pass of its gradient step, so the cost is `steps` forward-backward
  passes plus one forward pass for the last iterate.
  """
  step = _ascent_step(logits_fn, x, y, eps, step_size, loss, norm)

  def attack_step(_, carry):
    x_adv, fooled = carry
    x_adv, logits = step(x_adv)
    return x_adv, fooled | (logits.argmax(axis=-1) != y)

  x_adv = _init(rng, x, eps, random_start=True, norm=norm)
  x_adv, fooled = jax.lax.fori_loop(0, steps, attack_step, (x_adv, jnp.zeros(y.shape, bool)),
                                    unroll=unroll)
  return fooled | (logits_fn(x_adv).argmax(axis=-1) != y)


def pgd_robust(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
               step_size: float, steps: int, restarts: int, loss: str = 'ce',
               norm: str = 'linf') -> jax.Array:
  """Returns robust (B,) bool: correct on clean x and on every iterate of every restart.

  Restart r starts uniformly in the eps-ball with fold_in(rng, r). The restarts are a Python
  loop, so jitting this whole function compiles restarts x steps steps; for many restarts,
  jit `fooled_in_restart` once and loop over restarts outside, as the Evaluator does.
  """
  robust = logits_fn(x).argmax(axis=-1) == y
  for r in range(restarts):
    robust &= ~fooled_in_restart(logits_fn, x, y, jax.random.fold_in(rng, r), eps=eps,
                                 step_size=step_size, steps=steps, loss=loss, norm=norm)
  return robust


def default_config() -> ml_collections.ConfigDict:
  """PGD's settings (config.eval.pgd): steps and restarts of the final evaluation of
  training, the step as a fraction of eps, and the loss ('ce', 'margin' or 'dlr')."""
  return ml_collections.ConfigDict(dict(steps=50, restarts=10, step_size=0.25, loss='ce'))


def _build(settings: ml_collections.ConfigDict, *, eps: float, norm: str, unroll: bool,
           straight_through: bool, name: str = 'pgd') -> attack.Attack:
  """PGD-steps-restarts in the `norm` eps-ball, as an evaluator's Attack named `name`."""
  step_size, steps, loss = settings.step_size * eps, settings.steps, settings.loss

  def fooled(logits_fn, x, y, rng, run):
    del run
    return fooled_in_restart(logits_fn, x, y, rng, eps=eps, step_size=step_size, steps=steps,
                             loss=loss, norm=norm, unroll=unroll)
  return attack.Attack(name, settings.restarts, fooled,
                       dict(steps=steps, restarts=settings.restarts, step_size=step_size,
                            loss=loss, norm=norm, unrolled=unroll), straight_through)


def _build_bpda(settings: ml_collections.ConfigDict, **kwargs) -> attack.Attack:
  """PGD through the model's straight-through surrogate."""
  return _build(settings, **{**kwargs, 'straight_through': True}, name='bpda')


PGD = attack.Declaration('pgd', 'pgd', default_config, _build)
BPDA = attack.Declaration('bpda', 'pgd', default_config, _build_bpda)
