"""FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free").

delta ~ U(-eps, eps), one sign step of size alpha = 1.25 eps from x + delta, projection back
to the eps-ball and [0, 1]. Known to overfit catastrophically at larger eps.

config.norm = 'l2' is the L2 version: delta uniform in the L2 eps-ball, the step
alpha * grad / ||grad||_2 per example, projection onto the L2 ball and [0, 1].

`clip_start`: the authors' CIFAR-10 code clips the random start x + delta to [0, 1] before
taking the gradient; their MNIST code does not (the gradient is taken at x + delta, and only
the final point is clipped), which on MNIST's mostly-black images leaves the final
perturbation of a background pixel anywhere in [0.25 eps, eps] instead of exactly eps.
configs/mnist_fgsm_rs.py follows the MNIST code.
"""

import jax
import ml_collections

from latentadv.attacks import norms
from latentadv.methods import base
from latentadv.methods import common

def default_config() -> ml_collections.ConfigDict:
  """step: the step (sign for L-inf, normalised gradient for L2) as a multiple of eps (1.25
  in the paper); clip_start: clip the random start to [0, 1] before the gradient (see the
  module docstring)."""
  return ml_collections.ConfigDict(dict(step=1.25, clip_start=True))


def perturb(apply_fn, params, model_state, x: jax.Array, labels: jax.Array, rng: jax.Array,
            config) -> jax.Array:
  """The FGSM-RS training input for x (B, H, W, C), a constant of the same shape."""
  noise_rng, attack_rng = jax.random.split(rng)
  eps, norm = config.eps, config.norm
  x_start = x + norms.sample_ball(noise_rng, x.shape, x.dtype, eps, norm)
  if config.fgsm_rs.clip_start:
    x_start = norms.project(x_start, x, eps, norm)
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  grad = common.input_gradient(logits_fn, x_start, labels)
  step = config.fgsm_rs.step * eps * norms.steepest_direction(grad, norm)
  x_adv = norms.project(x_start + step, x, eps, norm)
  return jax.lax.stop_gradient(x_adv)


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the FGSM-RS point of batch['image'] (B, H, W, C)."""
  attack_rng, train_rng = jax.random.split(rng)
  x_adv = perturb(apply_fn, params, model_state, batch['image'], batch['label'], attack_rng,
                  config)
  return common.train_on(apply_fn, params, model_state, x_adv, batch['label'], train_rng)


METHOD = base.Method(name='fgsm_rs', loss=loss, default_config=default_config,
                     norms=norms.NORMS, single_step=True)
