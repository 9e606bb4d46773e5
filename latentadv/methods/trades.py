"""TRADES (Zhang et al. 2019): KL inner maximisation, CE + beta * KL outer loss.

The authors' algorithm. Inner max: from x + 0.001 * N(0, 1), `steps` sign steps of size
`step_size` increasing KL(softmax(f(x)) || softmax(f(x'))) (f(x) a constant), each projected to
the eps-ball and [0, 1] (10 steps of 2/255 on CIFAR-10, 40 of 0.01 on MNIST). Attack passes
use BatchNorm per `config.method.attack_bn` and never update its statistics; the reference code
attacks in eval mode (`attack_bn='eval'`). Loss: CE(f(x), y) + beta * KL(softmax(f(x)) ||
softmax(f(x'))), batch-mean KL, beta = 6, both passes in train mode (common.trades_loss). The
inner steps are a rolled loop (attacks/loops.py).
"""

import jax
import ml_collections

from latentadv.attacks import loops
from latentadv.attacks import norms
from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """steps, step_size (pixel units) of the inner max; beta: KL weight; init_std: start noise."""
  return ml_collections.ConfigDict(dict(steps=10, step_size=2 / 255, beta=6.0, init_std=0.001))


def adversarial_example(logits_fn, x: jax.Array, rng: jax.Array, *, eps, steps: int, step_size,
                        init_std) -> jax.Array:
  """The TRADES inner maximiser x' (B, H, W, C) for x under logits_fn."""
  clean_logits = jax.lax.stop_gradient(logits_fn(x))
  x_adv = x + init_std * jax.random.normal(rng, x.shape, x.dtype)
  x_adv = jax.lax.fori_loop(
      0, steps, lambda _, x_adv: common.kl_sign_step(logits_fn, x_adv, x, clean_logits,
                                                     step_size, eps), x_adv,
      unroll=loops.unroll_steps())
  return norms.project(x_adv, x, eps)  # a no-op after any step; keeps steps = 0 in range


def loss(apply_fn, params, model_state, batch, rng, config):
  """CE(f(x), y) + beta * KL(f(x) || f(x')) for batch['image'] (B, H, W, C)."""
  init_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  cfg = config.trades
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  x_adv = adversarial_example(logits_fn, x, init_rng, eps=config.eps, steps=cfg.steps,
                              step_size=cfg.step_size, init_std=cfg.init_std)
  return common.trades_loss(apply_fn, params, model_state, x, x_adv, y, train_rng, cfg.beta)


METHOD = base.Method(name='trades', loss=loss, default_config=default_config)
