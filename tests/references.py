"""Reference algorithms the attack tests compare against: a PGD bisection for minimal-norm
attacks and random point-to-hyperplane projection problems."""

import jax
import jax.numpy as jnp
import numpy as np

from latentadv.attacks import losses
from latentadv.attacks import norms


def pgd_minimal_eps(logits_fn, x, y, norm: str, upper: float, bisections: int = 8,
                    steps: int = 100) -> np.ndarray:
  """(B,) the smallest eps, to `bisections` halvings of [0, upper], at which PGD-`steps` in
  `norm` (CE, step eps / 10, a random start in the ball, any iterate counts) fools each point
  of x (B, H, W, C); `upper` where even that does not. A reference for minimal-norm attacks.
  The PGD loop is rolled (as pgd.fooled_in_restart, whose 100 unrolled steps compile slowly)."""
  def fooled_at(eps, rng):
    eps = eps[:, None, None, None]

    def objective(z):
      logits = logits_fn(z)
      return losses.cross_entropy(logits, y).sum(), logits.argmax(-1) != y

    def step(_, carry):
      x_adv, fooled = carry
      grad, wrong = jax.grad(objective, has_aux=True)(x_adv)
      x_adv = norms.project(x_adv + eps / 10 * norms.steepest_direction(grad, norm), x, eps, norm)
      return x_adv, fooled | wrong

    start = norms.project(x + norms.sample_ball(rng, x.shape, x.dtype, eps, norm), x, eps, norm)
    x_adv, fooled = jax.lax.fori_loop(0, steps, step, (start, jnp.zeros(y.shape, bool)))
    return fooled | (logits_fn(x_adv).argmax(-1) != y)

  fooled_at = jax.jit(fooled_at)
  lo, hi = np.zeros(len(y)), np.full(len(y), upper)
  for i in range(bisections):
    mid = (lo + hi) / 2
    fooled = np.asarray(fooled_at(jnp.asarray(mid, jnp.float32), jax.random.key(i)))
    lo, hi = np.where(fooled, lo, mid), np.where(fooled, mid, hi)
  return hi


def random_hyperplane_problems(b_scale: tuple[float, float]):
  """(t, w, b) for 40 projection problems in 50 dimensions: points t in [0, 1] (10 coordinates
  on the box's faces), sparse normals w and offsets b whose reach is a factor drawn from
  b_scale times that of a random point of the box (factors above 1 can be out of reach)."""
  rng = np.random.default_rng(0)
  t = rng.uniform(0, 1, (40, 50))
  t[:, :10] = rng.choice([0.0, 1.0], (40, 10))
  w = rng.normal(size=(40, 50)) * (rng.uniform(size=(40, 50)) > 0.2)
  b = (w * rng.uniform(0, 1, (40, 50))).sum(1) * rng.uniform(*b_scale, 40)
  return t, w, b
