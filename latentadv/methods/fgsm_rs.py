"""FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free").

delta ~ U(-eps, eps), one sign step of size alpha = 1.25 eps from x + delta, projection back
to the eps-ball and [0, 1]. Known to overfit catastrophically at larger eps.
"""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.attacks import pgd
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """step: the sign step as a multiple of eps (1.25 in the paper)."""
  return ml_collections.ConfigDict(dict(step=1.25))


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the FGSM-RS point of batch['image'] (B, H, W, C)."""
  noise_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  eps = config.eps
  x_start = pgd.project(x + jax.random.uniform(noise_rng, x.shape, x.dtype, -eps, eps), x, eps)
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  grad = common.input_gradient(logits_fn, x_start, y)
  x_adv = pgd.project(x_start + config.fgsm_rs.step * eps * jnp.sign(grad), x, eps)
  return common.train_on(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv), y,
                         train_rng)
