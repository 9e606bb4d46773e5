"""Per-example attack losses on logits: larger means closer to (or past) a mistake."""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of logits (B, K) against integer labels (B,); returns (B,)."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Carlini-Wagner margin max_{j != y} z_j - z_y of logits (B, K), labels (B,); returns (B,).

  Positive exactly when the example is misclassified.
  """
  true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  best_other = jnp.where(is_true, -jnp.inf, logits).max(axis=-1)
  return best_other - true_logit


LOSSES = {'ce': cross_entropy, 'margin': margin}
