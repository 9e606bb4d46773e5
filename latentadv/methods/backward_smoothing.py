"""Backward Smoothing (Chen et al., AAAI 2022): a two-step TRADES attack with a logit-space start.

The authors' algorithm. The attack runs with BatchNorm in eval mode (always; the reference
code's choice, `config.method.attack_bn` does not apply) and never updates its statistics.
Clean logits z are a constant. Start: r ~ gamma * U(-1, 1) on the logits (gamma = 1); from
x' = x one sign step of size alpha DECREASING KL(softmax(z + r) || softmax(f(x'))), projected to
the eps-ball and [0, 1]. Then one TRADES sign step of size alpha increasing
KL(softmax(z) || softmax(f(x'))), same projection; alpha = eps (`step` = 1). Loss, in train
mode: CE(f(x), y) + beta * KL(softmax(f(x)) || softmax(f(x'))), batch-mean KL, beta = 6
(common.trades_loss).
"""

import jax
import ml_collections

from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """step: alpha as a multiple of eps; gamma: logit noise scale; beta: KL weight."""
  return ml_collections.ConfigDict(dict(step=1.0, gamma=1.0, beta=6.0))


def adversarial_example(logits_fn, x: jax.Array, rng: jax.Array, *, eps, step_size, gamma):
  """Returns (x_init, x_adv) (B, H, W, C): the backward-smoothing start and the final point."""
  clean_logits = jax.lax.stop_gradient(logits_fn(x))
  noise = gamma * jax.random.uniform(rng, clean_logits.shape, clean_logits.dtype, -1.0, 1.0)
  x_init = common.kl_sign_step(logits_fn, x, x, clean_logits + noise, step_size, eps,
                               direction=-1.0)
  return x_init, common.kl_sign_step(logits_fn, x_init, x, clean_logits, step_size, eps)


def loss(apply_fn, params, model_state, batch, rng, config):
  """CE(f(x), y) + beta * KL(f(x) || f(x')) for batch['image'] (B, H, W, C)."""
  noise_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  cfg = config.backward_smoothing
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, 'eval')
  _, x_adv = adversarial_example(logits_fn, x, noise_rng, eps=config.eps,
                                 step_size=cfg.step * config.eps, gamma=cfg.gamma)
  return common.trades_loss(apply_fn, params, model_state, x, x_adv, y, train_rng, cfg.beta)


METHOD = base.Method(name='backward_smoothing', loss=loss, default_config=default_config)
