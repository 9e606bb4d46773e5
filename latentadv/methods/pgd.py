"""PGD adversarial training (Madry et al. 2018): k-step PGD from a random start, L-inf or L2.

config.norm ('linf' or 'l2') is the threat model: L2 steps are step_size * grad / ||grad||_2
per example from a start uniform in the L2 ball, projected onto the ball and [0, 1]
(attacks/pgd.py).
"""

import jax
import ml_collections

from latentadv.attacks import norms
from latentadv.attacks import pgd
from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """steps and step_size (pixel units, in config.norm): 10 and 2/255 for CIFAR-10, 40 and
  0.01 for MNIST (L-inf)."""
  return ml_collections.ConfigDict(dict(steps=10, step_size=2 / 255))


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the last PGD iterate from batch['image'] (B, H, W, C)."""
  start_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  x_adv = pgd.pgd(logits_fn, x, y, start_rng, eps=config.eps, step_size=config.pgd.step_size,
                  steps=config.pgd.steps, random_start=True, norm=config.norm)
  return common.train_on(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv), y,
                         train_rng)


METHOD = base.Method(name='pgd', loss=loss, default_config=default_config, norms=norms.NORMS)
