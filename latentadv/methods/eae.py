"""EAE: endogenous adversarial examples in latent space (Qian et al., 2021). *Interpretation*.

No public code exists; this is our reading of the paper (see docs/methods.md), not the authors'
algorithm. The model is split into its penultimate features h = features(x) (B, D) and its
linear head z = h W + b (W: D x K). No input gradient is computed: the adversarial example
lives in h-space and is built in closed form from the head's weights.

- Seeds: correctly classified examples whose logit margin z_y - max_{k != y} z_k is below the
  q-quantile of the batch's margins (all examples, q = `quantile`), i.e. the correct examples
  closest to the decision boundary. The quantile is over the whole batch, so there are no
  seeds (and the step is standard training) until more than a fraction 1 - q of the batch is
  classified correctly.
- For a seed with runner-up class j and w = W[:, j] - W[:, y]: the minimal L2 step that
  reaches the boundary z_j = z_y of the linear head (DeepFool in latent space),
  r = (z_y - z_j) / ||w||^2 * w, scaled by (1 + overshoot), its L2 norm capped at
  `eps_latent` (raw feature units); r = 0 for every other example. r is a constant for
  differentiation.
- Loss: CE(head(h), y) + lam * CE(head(h + r), y), the second term averaged over the seeds
  only (0 without seeds). The gradient reaches the network through h in both terms, so the
  step is ONE forward and ONE backward pass through the network, as standard training.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """quantile: margin quantile selecting seeds; overshoot: r is scaled by 1 + overshoot;
  eps_latent: L2 cap on r in feature units; lam: weight of the latent adversarial CE.
  q = 0.5 and the other values are ours (the paper gives none)."""
  return ml_collections.ConfigDict(dict(quantile=0.5, overshoot=0.02, eps_latent=1.0, lam=1.0))


def head_logits(head_params, features: jax.Array) -> jax.Array:
  """Logits (B, K) of the linear head {'kernel': (D, K), 'bias': (K,)} on features (B, D)."""
  return features @ head_params['kernel'] + head_params['bias']


def latent_step(head_params, features: jax.Array, labels: jax.Array, *, quantile: float,
                overshoot: float, eps_latent: float) -> tuple[jax.Array, jax.Array]:
  """Returns (r (B, D), seed mask (B,) bool): the latent adversarial step, zero off the seeds.

  See the module docstring; the result is a constant (stop_gradient) of features (B, D).
  """
  features = jax.lax.stop_gradient(features)
  head_params = jax.lax.stop_gradient(head_params)
  logits = head_logits(head_params, features)
  true_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits)
  runner_up = others.argmax(-1)
  margin = true_logit - others.max(-1)
  seeds = (margin > 0) & (margin < jnp.quantile(margin, quantile))
  kernel = head_params['kernel'].T  # (K, D)
  direction = kernel[runner_up] - kernel[labels]  # (B, D)
  squared_norm = (direction * direction).sum(-1)
  scale = (1.0 + overshoot) * margin / jnp.where(squared_norm > 0, squared_norm, 1.0)
  step = scale[:, None] * direction
  step_norm = jnp.sqrt((step * step).sum(-1, keepdims=True))
  step = step * jnp.minimum(1.0, eps_latent / jnp.maximum(step_norm, 1e-12))
  return jnp.where(seeds[:, None], step, 0.0), seeds


def loss(apply_fn, params, model_state, batch, rng, config):
  """CE(head(h), y) + lam * seed-mean CE(head(h + r), y) for batch['image'] (B, H, W, C)."""
  cfg = config.eae
  y = batch['label']
  features_fn = functools.partial(apply_fn, output='features')
  features, new_state = common.forward(features_fn, params, model_state, batch['image'], rng,
                                       train=True)
  step, seeds = latent_step(params['head'], features, y, quantile=cfg.quantile,
                            overshoot=cfg.overshoot, eps_latent=cfg.eps_latent)
  logits = head_logits(params['head'], features)
  adv_losses = optax.softmax_cross_entropy_with_integer_labels(
      head_logits(params['head'], features + step), y)
  seed_count = seeds.sum()
  latent_ce = jnp.where(seeds, adv_losses, 0.0).sum() / jnp.maximum(seed_count, 1)
  ce = common.cross_entropy(logits, y)
  total = ce + cfg.lam * latent_ce
  return total, {'loss': total, 'accuracy': common.accuracy(logits, y), 'ce': ce,
                 'latent_ce': latent_ce, 'seed_fraction': seed_count / y.shape[0]}, new_state


def check(config, require: base.Require):
  """config.method.eae.quantile is a fraction."""
  quantile = config.method.eae.quantile
  require(0 <= quantile <= 1, 'method.eae.quantile', quantile, 'a fraction in [0, 1]')


METHOD = base.Method(name='eae', loss=loss, default_config=default_config, check=check)
