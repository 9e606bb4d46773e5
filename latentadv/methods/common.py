"""Building blocks shared by the training methods: forward passes, CE, KL and gradient cosine.

A method module declares one `Method` (methods/base.py) whose `loss` is a pure function
  loss(apply_fn, params, model_state, batch, rng, config) -> (loss, metrics, new_model_state)
where apply_fn is a Flax `model.apply`, model_state holds the non-trainable collections
(BatchNorm statistics), batch = {'image': (B, H, W, C) float32 in [0, 1], 'label': (B,) int32}
(plus the entries of the method's carry, if it declares one) and config is the run's
`config.method` (shared keys such as `eps` and `norm`, plus one sub-config per method). The
trainer differentiates `loss` with respect to params and logs the metrics (scalars). A method
whose declaration lists 'l2' in its `norms` reads config.norm (the threat model, see
attacks/norms.py); the others define only L-inf.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from latentadv.attacks import norms
from latentadv.models import taps

Variables = Mapping[str, Any]


def forward(apply_fn: Callable, params, model_state, x: jax.Array, rng: jax.Array, *,
            train: bool, perturbations: Mapping[str, jax.Array] | None = None,
            capture: tuple[str, ...] = ()):
  """Runs the model on x (B, H, W, C); returns (logits (B, K), new model_state).

  In train mode BatchNorm uses batch statistics and the returned state holds the updated
  running averages; in eval mode it uses the running averages and the state is unchanged.
  `perturbations` adds a tensor at each named latent tap. `capture` names collections the
  model writes during the pass (e.g. taps.FEATURE_STD); they are returned in the new state,
  for the caller to take out.
  """
  variables = {'params': params, **model_state}
  if perturbations:
    variables[taps.COLLECTION] = perturbations
  if not train and not capture:
    return apply_fn(variables, x, train=False), model_state
  mutable = [*capture, *(model_state if train else ())]
  logits, updates = apply_fn(variables, x, train=train, mutable=mutable, rngs={'dropout': rng})
  return logits, {**model_state, **updates}


def attack_forward(apply_fn: Callable, params, model_state, rng: jax.Array, bn_mode: str):
  """Returns logits_fn(x, perturbations=None) -> (B, K) for attack passes.

  BatchNorm runs in `bn_mode` ('train': batch statistics, 'eval': running averages); either
  way the running statistics are never updated by an attack pass.
  """
  def logits_fn(x, perturbations=None):
    logits, _ = forward(apply_fn, params, model_state, x, rng, train=bn_mode == 'train',
                        perturbations=perturbations)
    return logits
  return logits_fn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of logits (B, K) against integer labels (B,); a scalar."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows of logits (B, K) whose argmax equals labels (B,); a scalar."""
  return (logits.argmax(-1) == labels).mean()


def input_gradient(logits_fn: Callable, x: jax.Array, labels: jax.Array) -> jax.Array:
  """Gradient (B, H, W, C) of the summed cross-entropy of logits_fn at x w.r.t. x."""
  def summed_loss(x):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), labels).sum()
  return jax.grad(summed_loss)(x)


def train_on(apply_fn: Callable, params, model_state, x: jax.Array, labels: jax.Array,
             rng: jax.Array, perturbations=None):
  """Cross-entropy of the model in train mode on x (B, H, W, C); the usual method return."""
  logits, new_state = forward(apply_fn, params, model_state, x, rng, train=True,
                              perturbations=perturbations)
  loss = cross_entropy(logits, labels)
  return loss, {'loss': loss, 'accuracy': accuracy(logits, labels)}, new_state


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(softmax(p_logits) || softmax(q_logits)) summed over classes, averaged over the batch.

  Logits are (B, K); the result is a scalar (PyTorch's KLDivLoss(sum) / B, 'batchmean').
  """
  log_p = jax.nn.log_softmax(p_logits, axis=-1)
  log_q = jax.nn.log_softmax(q_logits, axis=-1)
  return (jnp.exp(log_p) * (log_p - log_q)).sum() / p_logits.shape[0]


def kl_sign_step(logits_fn: Callable, x_adv: jax.Array, x: jax.Array, target_logits: jax.Array,
                 step_size, eps, direction: float = 1.0) -> jax.Array:
  """One L-inf sign step on KL(softmax(target_logits) || softmax(logits_fn(x_adv))).

  direction = +1 increases the KL (TRADES), -1 decreases it (Backward Smoothing's start). The
  step is projected to the eps-ball around x (B, H, W, C) and to [0, 1]; target_logits (B, K)
  are a constant.
  """
  target_logits = jax.lax.stop_gradient(target_logits)
  grad = jax.grad(lambda x_adv: kl_divergence(target_logits, logits_fn(x_adv)))(x_adv)
  return norms.project(x_adv + direction * step_size * jnp.sign(grad), x, eps)


def mean_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean over examples of cos(a_i, b_i) for a, b of shape (B, ...), each row flattened.

  As in the GradAlign reference code, examples where either row is zero are left out of the
  mean (1.0 when none is left); here "zero" means numerically zero: a largest entry below
  sqrt of the dtype's smallest normal number (about 1e-19 in float32), where the squared norm
  underflows. Each row is divided by its largest absolute entry (a constant) before the norms
  are taken, which leaves the cosine and its gradient unchanged but keeps the norms >= 1, so
  the second-order gradient of tiny input gradients (confidently classified examples) does
  not overflow into NaN. Differentiable everywhere: a zero row gives a zero gradient.
  """
  def rescaled(v):
    v = v.reshape(v.shape[0], -1)
    scale = jax.lax.stop_gradient(jnp.abs(v).max(-1))
    usable = scale >= jnp.sqrt(jnp.finfo(v.dtype).tiny)
    return v / jnp.where(usable, scale, 1.0)[:, None], usable

  (a, a_usable), (b, b_usable) = rescaled(a), rescaled(b)
  valid = a_usable & b_usable
  a_sq, b_sq = (a * a).sum(-1), (b * b).sum(-1)
  norms = jnp.sqrt(jnp.where(valid, a_sq, 1.0)) * jnp.sqrt(jnp.where(valid, b_sq, 1.0))
  cos = jnp.where(valid, (a * b).sum(-1) / norms, 0.0)
  count = valid.sum()
  return jnp.where(count > 0, cos.sum() / jnp.maximum(count, 1), 1.0)


def trades_loss(apply_fn: Callable, params, model_state, x: jax.Array, x_adv: jax.Array,
                labels: jax.Array, rng: jax.Array, beta: float):
  """TRADES' outer loss CE(f(x), y) + beta * KL(softmax(f(x)) || softmax(f(x_adv))).

  Both forward passes run in train mode (batch statistics), clean first, and the BatchNorm
  running averages are updated by each in turn, as in the reference code; the returned state
  holds both updates. The gradient flows through both softmaxes; x_adv is a constant. Metrics:
  'accuracy' on x_adv (the training input, as for the other methods), 'clean_accuracy', 'ce'
  and 'kl'. Used by TRADES and Backward Smoothing.
  """
  clean_rng, adv_rng = jax.random.split(rng)
  logits, model_state = forward(apply_fn, params, model_state, x, clean_rng, train=True)
  adv_logits, model_state = forward(apply_fn, params, model_state, jax.lax.stop_gradient(x_adv),
                                    adv_rng, train=True)
  ce = cross_entropy(logits, labels)
  kl = kl_divergence(logits, adv_logits)
  loss = ce + beta * kl
  return loss, {'loss': loss, 'accuracy': accuracy(adv_logits, labels),
                'clean_accuracy': accuracy(logits, labels), 'ce': ce, 'kl': kl}, model_state
