"""Regularised single-step AT (Vivek B.S. & Venkatesh Babu, 2020). *Interpretation*.

No public code exists; this is our reading of the paper (see docs/methods.md), not the authors'
algorithm. FGSM adversarial training (zero start, step `step` x eps, projected to the eps-ball
and [0, 1]) plus three regularisers, each on when its weight is > 0 (a term whose weight is 0
is not computed and reported as 0). With per-example CE losses L:
- R1 logit pairing: mean_i ||z(x_fgsm)_i - z(x)_i||^2.
- R2 random-start gap: mean_i relu(L(x_rs)_i - L(x_fgsm)_i), x_rs the FGSM-RS point (uniform
  start in the eps-ball, step `rs_step` x eps, projected). On a locally linear loss FGSM's
  vertex maximises the loss over the ball, so the gap is zero; a gradient-masked model shows
  a positive gap.
- R3 local linearity: mean_i |L(x_fgsm)_i - L(x)_i - <delta_i, g_i>|, delta = x_fgsm - x and g
  the input gradient of the clean loss (one backward of the summed loss: per example up to
  the coupling of train-mode BatchNorm).
Gradients: the inputs x_fgsm, x_rs, delta and g are constants (no double backprop); the
parameter gradient flows through every logit and loss above, including the clean pass that
also produces g. The clean pass and the FGSM-RS attack run in `config.method.attack_bn` mode
and never update BatchNorm statistics; the pass at x_fgsm is the training pass (train mode,
its statistics kept) and the pass at x_rs runs like an attack pass.
Cost: FGSM's 2 forward + 2 backward, plus 1 backward through the clean pass if R1 or R3 is on,
plus 2 forward + 2 backward (FGSM-RS attack and the pass at x_rs) if R2 is on.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from latentadv.attacks import norms
from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """step: FGSM step / eps; rs_step: FGSM-RS step / eps (R2); logit_pairing, random_start_gap,
  linearity: weights of R1, R2 and R3 (0 = off). The weights are our defaults, not the paper's."""
  return ml_collections.ConfigDict(dict(step=1.0, rs_step=1.25, logit_pairing=0.5,
                                        random_start_gap=0.5, linearity=0.5))


def losses_logits_and_input_gradient(logits_fn, x: jax.Array, labels: jax.Array):
  """(per-example CE (B,), logits (B, K), gradient (B, H, W, C) of the summed CE w.r.t. x)."""
  def summed_loss(x):
    logits = logits_fn(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.sum(), (losses, logits)
  (_, (losses, logits)), grad = jax.value_and_grad(summed_loss, has_aux=True)(x)
  return losses, logits, grad


def linearity_gap(adv_losses: jax.Array, clean_losses: jax.Array, clean_grad: jax.Array,
                  delta: jax.Array) -> jax.Array:
  """R3: mean_i |L_adv_i - L_i - <delta_i, g_i>| for losses (B,) and delta, g (B, H, W, C)."""
  first_order = (delta * clean_grad).reshape(delta.shape[0], -1).sum(-1)
  return jnp.abs(adv_losses - clean_losses - first_order).mean()


def loss(apply_fn, params, model_state, batch, rng, config):
  """FGSM CE + weighted R1, R2, R3 for batch['image'] (B, H, W, C); see the module docstring."""
  attack_rng, noise_rng, rs_rng, train_rng = jax.random.split(rng, 4)
  x, y = batch['image'], batch['label']
  eps, cfg = config.eps, config.single_step_reg
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  clean_losses, clean_logits, clean_grad = losses_logits_and_input_gradient(logits_fn, x, y)
  clean_grad = jax.lax.stop_gradient(clean_grad)
  x_fgsm = jax.lax.stop_gradient(norms.project(x + cfg.step * eps * jnp.sign(clean_grad), x, eps))
  adv_logits, new_state = common.forward(apply_fn, params, model_state, x_fgsm, train_rng,
                                         train=True)
  adv_losses = optax.softmax_cross_entropy_with_integer_labels(adv_logits, y)
  ce = adv_losses.mean()
  zero = jnp.zeros(())
  logit_pairing = random_start_gap = linearity = zero
  if cfg.logit_pairing > 0:
    logit_pairing = ((adv_logits - clean_logits) ** 2).sum(-1).mean()
  if cfg.random_start_gap > 0:
    start = norms.project(x + jax.random.uniform(noise_rng, x.shape, x.dtype, -eps, eps), x, eps)
    rs_logits_fn = common.attack_forward(apply_fn, params, model_state, rs_rng,
                                         config.attack_bn)
    start_grad = common.input_gradient(rs_logits_fn, start, y)
    x_rs = jax.lax.stop_gradient(norms.project(start + cfg.rs_step * eps * jnp.sign(start_grad),
                                             x, eps))
    rs_losses = optax.softmax_cross_entropy_with_integer_labels(rs_logits_fn(x_rs), y)
    random_start_gap = jax.nn.relu(rs_losses - adv_losses).mean()
  if cfg.linearity > 0:
    linearity = linearity_gap(adv_losses, clean_losses, clean_grad, x_fgsm - x)
  total = (ce + cfg.logit_pairing * logit_pairing + cfg.random_start_gap * random_start_gap
           + cfg.linearity * linearity)
  return total, {'loss': total, 'accuracy': common.accuracy(adv_logits, y), 'ce': ce,
                 'logit_pairing': logit_pairing, 'random_start_gap': random_start_gap,
                 'linearity': linearity}, new_state


# Its regularisers are its defence against catastrophic overfitting: its recipes run without
# the collapse monitor (single_step=False).
METHOD = base.Method(name='single_step_reg', loss=loss, default_config=default_config)
