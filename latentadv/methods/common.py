"""Building blocks shared by the training methods: forward passes and the clean CE loss.

A method is a pure function
  loss(apply_fn, params, model_state, batch, rng, config) -> (loss, metrics, new_model_state)
where apply_fn is a Flax `model.apply`, model_state holds the non-trainable collections
(BatchNorm statistics), batch = {'image': (B, H, W, C) float32 in [0, 1], 'label': (B,) int32}
and config is the run's `config.method` (shared keys such as `eps`, plus one sub-config per
method). The trainer differentiates `loss` with respect to params.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from latentadv.models import taps

Variables = Mapping[str, Any]


def forward(apply_fn: Callable, params, model_state, x: jax.Array, rng: jax.Array, *,
            train: bool, perturbations: Mapping[str, jax.Array] | None = None):
  """Runs the model on x (B, H, W, C); returns (logits (B, K), new model_state).

  In train mode BatchNorm uses batch statistics and the returned state holds the updated
  running averages; in eval mode it uses the running averages and the state is unchanged.
  `perturbations` adds a tensor at each named latent tap.
  """
  variables = {'params': params, **model_state}
  if perturbations:
    variables[taps.COLLECTION] = perturbations
  if not train:
    return apply_fn(variables, x, train=False), model_state
  logits, updates = apply_fn(variables, x, train=True, mutable=list(model_state),
                             rngs={'dropout': rng})
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
