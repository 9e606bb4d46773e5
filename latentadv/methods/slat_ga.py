"""SLAT with gradient alignment (`slat_ga`, Park & Lee, ICCV 2021): SLAT + coeff * (1 - cos).

The authors' variant of SLAT (methods/slat.py, whose functions and `config.method.slat`
hyper-parameters it uses). Pass 1 is SLAT's: one backward pass gives the clean input gradient
g_x_clean and the latent gradients, hence the SLAT perturbations. Pass 2 runs the perturbed
forward (train mode, its BatchNorm statistics kept) and also takes its input gradient g_x_adv.
Loss: the pass-2 cross-entropy + coeff * (1 - mean_i cos(g_x_clean_i, g_x_adv_i)), coeff = 1;
the parameter gradient goes through g_x_adv (a double backward), while g_x_clean is a
constant, since SLAT discards pass 1's parameter gradients (as the GradAlign reference code
does for its first gradient). This is the paper's method; in the authors' code both gradients
are detached, so the alignment term never reaches the weights (coeff = 0 trains as that code).
"""

import jax
import ml_collections
import optax

from latentadv.methods import base
from latentadv.methods import common
from latentadv.methods import slat


def default_config() -> ml_collections.ConfigDict:
  """coeff: weight of the alignment term (SLAT's own knobs are in config.method.slat)."""
  return ml_collections.ConfigDict(dict(coeff=1.0))


def loss(apply_fn, params, model_state, batch, rng, config):
  """SLAT's cross-entropy + coeff * (1 - cos(g_x_clean, g_x_adv)); see the module docstring."""
  attack_rng, train_rng = jax.random.split(rng)
  x, y = batch['image'], batch['label']
  x_adv, deltas, grad_clean, model_state = slat.perturb(apply_fn, params, model_state, x, y,
                                                        attack_rng, config)

  def summed_ce(x_in):
    logits, new_state = common.forward(apply_fn, params, model_state, x_in, train_rng,
                                       train=True, perturbations=deltas)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(), (logits, new_state)

  (ce_sum, (logits, new_state)), grad_adv = jax.value_and_grad(summed_ce, has_aux=True)(x_adv)
  ce = ce_sum / y.shape[0]
  cos = common.mean_cosine(jax.lax.stop_gradient(grad_clean), grad_adv)
  total = ce + config.slat_ga.coeff * (1.0 - cos)
  return total, {'loss': total, 'accuracy': common.accuracy(logits, y), 'ce': ce,
                 'cos': cos}, new_state


METHOD = base.Method(name='slat_ga', loss=loss, default_config=default_config,
                     single_step=True, check=slat.check)  # it reads config.method.slat
