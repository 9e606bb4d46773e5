"""FGSM adversarial training (Goodfellow et al. 2015): zero start, one sign step of size eps."""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.attacks import norms
from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """step: the sign step as a multiple of eps."""
  return ml_collections.ConfigDict(dict(step=1.0))


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at x + eps * sign(grad_x CE(x)), clipped to [0, 1]; x is (B, H, W, C)."""
  attack_rng, train_rng = jax.random.split(rng)
  x, y = batch['image'], batch['label']
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  grad = common.input_gradient(logits_fn, x, y)
  x_adv = norms.project(x + config.fgsm.step * config.eps * jnp.sign(grad), x, config.eps)
  return common.train_on(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv), y,
                         train_rng)


METHOD = base.Method(name='fgsm', loss=loss, default_config=default_config, single_step=True)
