"""What a training method declares: one `Method` value per method module.

The trainer, the train state, validation and the base config read a method only through its
declaration (see docs/adding_a_method.md); `methods.register` adds one to the registry.
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_collections

# Keys of config.method shared by every method; a method's own keys live in
# config.method.<name>, so no method may take one of these names.
SHARED_KEYS = ('name', 'eps', 'norm', 'attack_bn')

# require(condition, key, value, expected): the config error that names config.<key>.
Require = Callable[[bool, str, object, str], None]


@dataclasses.dataclass(frozen=True)
class Carry:
  """Per-example state a method keeps from step to step (in the TrainState, checkpointed).

  init(batch_shape, method_config) -> {name: array}: the carry at the start of training, for
    global batches of shape batch_shape (B, H, W, C).
  update(carry, carry_grad, method_config) -> carry: the carry after a step, from the loss
    gradient w.r.t. the carry (the same backward pass as the parameter gradient).
  The trainer passes the carry's entries to `loss` as entries of its batch.
  """
  init: Callable[[tuple[int, ...], ml_collections.ConfigDict], dict[str, jax.Array]]
  update: Callable[[dict, dict, ml_collections.ConfigDict], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method as the trainer sees it.

  name: its key in the registry, in config.method.name and of its sub-config config.method.<name>.
  loss: loss(apply_fn, params, model_state, batch, rng, method_config) -> (loss, metrics,
    new_model_state), pure and jittable; method_config is config.method (see methods/common.py).
  default_config: () -> the ConfigDict of its hyper-parameters, config.method.<name>.
  norms: the threat models it defines (config.method.norm values): 'linf', and 'l2' if its
    loss reads config.norm.
  single_step: its adversarial examples take one gradient step, so training can overfit
    catastrophically: its recipes turn the collapse monitor on (base_config.set_method).
  carry: the per-example state it keeps across steps (Carry), or None.
  replays: replays(method_config) -> optimizer steps trained in a row on each minibatch, or
    None for 1. Step s trains on minibatch s // replays.
  check: check(config, require) validates the method's keys in the run's config (also keys
    outside config.method), calling require(condition, key, value, expected) for each rule;
    None when the generic checks of latentadv/validation.py suffice.
  """
  name: str
  loss: Callable
  default_config: Callable[[], ml_collections.ConfigDict]
  norms: tuple[str, ...] = ('linf',)
  single_step: bool = False
  carry: Carry | None = None
  replays: Callable[[ml_collections.ConfigDict], int] | None = None
  check: Callable[[ml_collections.ConfigDict, Require], None] | None = None

  def init_carry(self, batch_shape: tuple[int, ...],
                 method_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """The carry at the start of training for batches of shape (B, H, W, C); {} without one."""
    return {} if self.carry is None else self.carry.init(batch_shape, method_config)

  def update_carry(self, carry: dict, carry_grad: dict,
                   method_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """The carry after a step, given the loss gradient w.r.t. it; unchanged without one."""
    return carry if self.carry is None else self.carry.update(carry, carry_grad, method_config)

  def minibatch_replays(self, method_config: ml_collections.ConfigDict) -> int:
    """Optimizer steps trained in a row on each minibatch (1 unless the method replays)."""
    return 1 if self.replays is None else self.replays(method_config)
