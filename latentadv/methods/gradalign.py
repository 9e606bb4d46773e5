"""GradAlign (Andriushchenko & Flammarion 2020): FGSM training plus a gradient-alignment term.

The authors' algorithm. An FGSM step from x (zero start, step eps: the paper's GradAlign
setting) or from a uniform start in the eps-ball (`random_start`, FGSM-RS; then set `step` to
1.25), projected to the eps-ball and [0, 1], gives the training input. The regulariser is
lam * (1 - mean_i cos(g1_i, g2_i)), lam = 0.2 at eps = 8/255, with g1 the input gradient of the
FGSM pass (grad_x L(x) for a zero start) and g2 = grad_x L(x + eta), eta ~ U(-eps, eps) (not
clipped to [0, 1], as in the reference code); examples with a zero gradient are left out of the
mean. The term is differentiated w.r.t. the parameters through g2 (double backprop); like the
reference code, g1 is a constant unless `backprop_both` (the authors report no substantial
difference). Loss: CE at the FGSM point + the regulariser.
"""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.attacks import norms
from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """lam: weight of the alignment term; random_start: FGSM-RS start; step: FGSM step / eps;
  backprop_both: differentiate through both gradients of the cosine, not only g2."""
  return ml_collections.ConfigDict(dict(lam=0.2, random_start=False, step=1.0,
                                        backprop_both=False))


def loss(apply_fn, params, model_state, batch, rng, config):
  """CE at the FGSM point of batch['image'] (B, H, W, C) + lam * (1 - cos); see the docstring."""
  start_rng, eta_rng, attack_rng, train_rng = jax.random.split(rng, 4)
  x, y = batch['image'], batch['label']
  eps, cfg = config.eps, config.gradalign
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  x_start = x
  if cfg.random_start:
    x_start = norms.project(x + jax.random.uniform(start_rng, x.shape, x.dtype, -eps, eps), x, eps)
  grad_fgsm = common.input_gradient(logits_fn, x_start, y)
  x_adv = norms.project(x_start + cfg.step * eps * jnp.sign(grad_fgsm), x, eps)
  eta = jax.random.uniform(eta_rng, x.shape, x.dtype, -eps, eps)
  grad_eta = common.input_gradient(logits_fn, x + eta, y)
  if not cfg.backprop_both:
    grad_fgsm = jax.lax.stop_gradient(grad_fgsm)
  cos = common.mean_cosine(grad_fgsm, grad_eta)
  ce, metrics, new_state = common.train_on(apply_fn, params, model_state,
                                           jax.lax.stop_gradient(x_adv), y, train_rng)
  total = ce + cfg.lam * (1.0 - cos)
  return total, {**metrics, 'loss': total, 'ce': ce, 'cos': cos}, new_state


METHOD = base.Method(name='gradalign', loss=loss, default_config=default_config, single_step=True)
