"""N-FGSM (de Jorge et al. 2022, "Make some noise"): noise plus an unprojected FGSM step.

The authors' algorithm (their code's default, without its optional clipping): eta ~ U(-k eps,
k eps) with k = 2, x + eta clipped to [0, 1], one sign step of size eps of the CE gradient at
that point, and the result clipped to [0, 1] only; it is NOT projected back to the eps-ball,
so the training perturbation reaches (k + 1) eps. Trains on the CE at that point.
"""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """k: noise radius as a multiple of eps (2); step: the sign step as a multiple of eps (1)."""
  return ml_collections.ConfigDict(dict(k=2.0, step=1.0))


def training_input(logits_fn, x: jax.Array, labels: jax.Array, rng: jax.Array, eps, k,
                   step) -> jax.Array:
  """The N-FGSM training input for x (B, H, W, C): in [0, 1], up to (k + step) eps from x."""
  x_noisy = jnp.clip(x + jax.random.uniform(rng, x.shape, x.dtype, -k * eps, k * eps), 0.0, 1.0)
  grad = common.input_gradient(logits_fn, x_noisy, labels)
  return jnp.clip(x_noisy + step * eps * jnp.sign(grad), 0.0, 1.0)


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the N-FGSM point of batch['image'] (B, H, W, C)."""
  noise_rng, attack_rng, train_rng = jax.random.split(rng, 3)
  x, y = batch['image'], batch['label']
  logits_fn = common.attack_forward(apply_fn, params, model_state, attack_rng, config.attack_bn)
  x_adv = training_input(logits_fn, x, y, noise_rng, config.eps, config.n_fgsm.k,
                         config.n_fgsm.step)
  return common.train_on(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv), y,
                         train_rng)


METHOD = base.Method(name='n_fgsm', loss=loss, default_config=default_config, single_step=True)
