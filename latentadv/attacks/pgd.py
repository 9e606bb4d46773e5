"""L-inf projected gradient descent: init + sign-gradient ascent + projection in a fori_loop.

`logits_fn` maps images x (B, H, W, C) in [0, 1] to logits (B, K). Step counts and the loss
name are Python values (static under jit); eps and step_size may be traced.

The step loop is unrolled (`fori_loop(..., unroll=True)`): XLA:CPU runs a convolutional
network about 3x slower inside a while loop than unrolled (benchmarks/step_cost.py shows the
PGD-AT cost); accelerators are indifferent, and restarts stay a rolled loop.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from latentadv.attacks.losses import LOSSES

LogitsFn = Callable[[jax.Array], jax.Array]


def project(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """Clips x_adv (B, H, W, C) to the L-inf eps-ball around x and to the image range [0, 1]."""
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def _init(rng: jax.Array, x: jax.Array, eps: float, random_start: bool) -> jax.Array:
  """Returns the starting point: x, or a uniform sample of the eps-ball around x, projected."""
  if not random_start:
    return x
  return project(x + jax.random.uniform(rng, x.shape, x.dtype, -eps, eps), x, eps)


def _ascent_step(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float,
                 step_size: float, loss: str) -> Callable:
  """Returns step(x_adv) -> (next iterate, logits at x_adv) with a single forward and backward."""
  loss_fn = LOSSES[loss]

  def objective(x_adv):
    logits = logits_fn(x_adv)
    return loss_fn(logits, y).sum(), logits

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step(x_adv):
    (_, logits), grad = grad_fn(x_adv)
    return project(x_adv + step_size * jnp.sign(grad), x, eps), logits

  return step


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
        step_size: float, steps: int, random_start: bool = True, loss: str = 'ce') -> jax.Array:
  """Returns the last PGD iterate (B, H, W, C) maximising the summed loss of labels y (B,)."""
  step = _ascent_step(logits_fn, x, y, eps, step_size, loss)
  x_adv = _init(rng, x, eps, random_start)
  return jax.lax.fori_loop(0, steps, lambda _, x_adv: step(x_adv)[0], x_adv, unroll=True)


def pgd_robust(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, eps: float,
               step_size: float, steps: int, restarts: int, loss: str = 'ce') -> jax.Array:
  """Returns robust (B,) bool: correct on clean x and on every iterate of every restart.

  Each restart starts uniformly in the eps-ball (rng folded with the restart index); the
  random start and all `steps` iterates after it are checked. The logits of each iterate
  come from the forward pass of its gradient step, so the cost per restart is `steps`
  forward-backward passes plus one forward pass for the last iterate.
  """
  step = _ascent_step(logits_fn, x, y, eps, step_size, loss)

  def correct(logits):
    return logits.argmax(axis=-1) == y

  def attack_step(_, carry):
    x_adv, robust = carry
    x_adv, logits = step(x_adv)
    return x_adv, robust & correct(logits)

  def restart(r, robust):
    x_adv = _init(jax.random.fold_in(rng, r), x, eps, random_start=True)
    x_adv, robust = jax.lax.fori_loop(0, steps, attack_step, (x_adv, robust), unroll=True)
    return robust & correct(logits_fn(x_adv))

  return jax.lax.fori_loop(0, restarts, restart, correct(logits_fn(x)))
