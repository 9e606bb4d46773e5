"""Free adversarial training (Shafahi et al. 2019, "Adversarial training for free!").

The authors' algorithm (their Algorithm 1). Each minibatch is replayed `replays` (m = 8) times
in a row; every replay is one optimizer step on CE(f(clip(x + delta, 0, 1)), y), and the SAME
backward pass gives the weight gradient and the gradient g w.r.t. delta, which updates the
perturbation: delta <- clip(delta + eps * sign(g), -eps, eps). delta (one per position in the
global batch, zeros at the start of training) persists across the replays and carries on to the
next minibatch.

How the trainer runs it (latentadv/train.py): the method has a carry,
{'perturbation': delta (B, H, W, C)}, kept in the TrainState (and checkpointed) and passed to
`loss` as batch['perturbation']; the trainer differentiates the loss w.r.t. params and the
carry together and calls `update_carry`. Optimizer step s trains on minibatch s // m, with the
augmentation of that minibatch. `config.optim.epochs` counts optimizer-step epochs, so a run
passes over the data epochs / m times and costs what natural training for `epochs` costs: the
paper's budget of N_ep / m passes for a natural-training budget of N_ep epochs.
"""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """replays: times each minibatch is trained on in a row (m in the paper)."""
  return ml_collections.ConfigDict(dict(replays=8))


def init_carry(batch_shape: tuple[int, ...], config) -> dict[str, jax.Array]:
  """The carry at the start of training: a zero perturbation of shape batch_shape (B, H, W, C)."""
  del config
  return {'perturbation': jnp.zeros(batch_shape, jnp.float32)}


def update_carry(carry: dict, carry_grad: dict, config) -> dict[str, jax.Array]:
  """delta <- clip(delta + eps * sign(g), -eps, eps), g the loss gradient w.r.t. delta."""
  eps = config.eps
  delta = carry['perturbation'] + eps * jnp.sign(carry_grad['perturbation'])
  return {'perturbation': jnp.clip(delta, -eps, eps)}


def loss(apply_fn, params, model_state, batch, rng, config):
  """CE at clip(batch['image'] + batch['perturbation'], 0, 1), both (B, H, W, C).

  Without batch['perturbation'] (a caller that keeps no carry) delta is zero, as at the start
  of training.
  """
  del config
  x = batch['image']
  delta = batch.get('perturbation', jnp.zeros_like(x))
  return common.train_on(apply_fn, params, model_state, jnp.clip(x + delta, 0.0, 1.0),
                         batch['label'], rng)


def replays(config) -> int:
  """Optimizer steps on each minibatch: config.method.free.replays (m)."""
  return config.free.replays


def check(config, require: base.Require):
  """config.method.free.replays is a positive integer."""
  value = config.method.free.replays
  require(isinstance(value, int) and value >= 1, 'method.free.replays', value,
          'an integer >= 1 (1 = no replay)')


METHOD = base.Method(name='free', loss=loss, default_config=default_config, single_step=True,
                     carry=base.Carry(init=init_carry, update=update_carry), replays=replays,
                     check=check)
