"""PGD adversarial training (Madry et al. 2018): k-step L-inf PGD from a random start."""

import jax
import ml_collections

from latentadv.attacks import pgd
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """steps and step_size (pixel units): 10 and 2/255 for CIFAR-10, 40 and 0.01 for MNIST."""
  return ml_collections.ConfigDict(dict(steps=10, step_size=2 / 255))


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the last PGD iterate from batch['image'] (B, H, W, C)."""
  start_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  x_adv = pgd.pgd(logits_fn, x, y, start_rng, eps=config.eps, step_size=config.pgd.step_size,
                  steps=config.pgd.steps, random_start=True)
  return common.train_on(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv), y,
                         train_rng)
