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


def _pick(logits: jax.Array, classes: jax.Array) -> jax.Array:
  """The logit of class classes[i] in row i of logits (B, K); returns (B,)."""
  return jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio (Croce & Hein 2020) of logits (B, K >= 3), labels (B,); (B,).

  -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z_pi1 >= z_pi2 >= ... the sorted
  logits: the margin, made invariant to shifting and rescaling the logits.
  """
  top = jax.lax.top_k(logits, 3)[0]
  return margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR of logits (B, K >= 4), true labels (B,) and target classes (B,); (B,).

  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) (the paper's APGD-T loss); positive
  once z_t exceeds z_y.
  """
  gap = _pick(logits, targets) - _pick(logits, labels)
  top = jax.lax.top_k(logits, 4)[0]
  return gap / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


LOSSES = {'ce': cross_entropy, 'margin': margin, 'dlr': dlr}
