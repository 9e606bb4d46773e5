"""The training state and what builds it from a config: model, optimizer, schedule, restore.

Shared by the trainer, the evaluator and `load_model`.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from latentadv import checkpoint
from latentadv import methods
from latentadv import models
from latentadv.data import datasets


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, checkpointed as a whole."""
  step: jax.Array
  params: Any
  model_state: Any  # non-trainable collections, e.g. {'batch_stats': ...}
  opt_state: Any
  # A method's persistent per-example state (its declared Carry); {} for most methods.
  carry: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict:
    """The variables for model.apply: {'params': ..., **model_state}."""
    return {'params': self.params, **self.model_state}


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step, per `optim.schedule`."""
  peak = optim.learning_rate
  if optim.schedule == 'cyclic':
    rise = max(1, int(optim.cyclic_peak * total_steps))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, rise),
         optax.linear_schedule(peak, 0.0, max(1, total_steps - rise))], [rise])
  if optim.schedule == 'piecewise':
    boundaries = {int(b * total_steps): optim.piecewise_factor
                  for b in optim.piecewise_boundaries}
    return optax.piecewise_constant_schedule(peak, boundaries)
  if optim.schedule == 'cosine':
    return optax.cosine_decay_schedule(peak, total_steps)
  if optim.schedule == 'interpolate':
    fractions, scales = zip(*optim.interpolate_points)
    steps = [round(f * total_steps) for f in fractions]
    return optax.join_schedules(
        [optax.linear_schedule(peak * a, peak * b, max(1, end - start))
         for start, end, a, b in zip(steps, steps[1:], scales, scales[1:])], steps[1:-1])
  return optax.constant_schedule(peak)


def momentum_schedule(optim: ml_collections.ConfigDict,
                      schedule: optax.Schedule) -> optax.Schedule | float:
  """SGD's momentum: constant `optim.momentum`, except under the cyclic schedule, where it
  moves against the learning rate from `momentum` at LR 0 to `cyclic_momentum_low` at the
  peak, as PyTorch's CyclicLR does by default (cycle_momentum=True, 0.9 and 0.8), which the
  reference codes of SLAT, FGSM-RS and N-FGSM use."""
  if optim.schedule != 'cyclic' or optim.cyclic_momentum_low == optim.momentum:
    return optim.momentum
  high, low, peak = optim.momentum, optim.cyclic_momentum_low, optim.learning_rate
  return lambda step: high - (high - low) * schedule(step) / peak


def make_optimizer(optim: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum (see momentum_schedule) or Adam, with weight decay added to the
  gradient (as in PyTorch)."""
  if optim.optimizer == 'adam':
    step_rule = optax.adam(schedule)
  else:
    momentum = momentum_schedule(optim, schedule)
    if callable(momentum):
      step_rule = optax.inject_hyperparams(optax.sgd, static_args=('nesterov',))(
          learning_rate=schedule, momentum=momentum, nesterov=optim.nesterov)
    else:
      step_rule = optax.sgd(schedule, momentum=momentum, nesterov=optim.nesterov)
  return optax.chain(optax.add_decayed_weights(optim.weight_decay), step_rule)


def build_model(config: ml_collections.ConfigDict):
  """The Flax model named by config.model (with its soft-quantiser if on), for config.data."""
  info = datasets.DATASETS[config.data.name]
  return models.create_model(config.model.name, config.model[config.model.name].to_dict(),
                             num_classes=info.num_classes, mean=info.mean, std=info.std,
                             soft_quant=config.model.soft_quant.to_dict(),
                             dtype=config.model.dtype)


def init_carry(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> dict:
  """The initial carry of config.method for global batches of images (H, W, C).

  A method that declares a carry (methods/base.py: Carry) gets its entries in the batch; the
  trainer differentiates the loss w.r.t. params and carry in one backward pass and stores the
  updated carry. Other methods have the empty carry {}.
  """
  return methods.METHODS[config.method.name].init_carry(
      (config.optim.batch_size, *image_shape), config.method)


def init_state(model, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, ...], carry: dict | None = None) -> TrainState:
  """A fresh TrainState for images of shape (H, W, C), holding `carry` (default {})."""
  variables = dict(models.init_variables(model, rng, (1, *image_shape)))
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=tx.init(params), carry={} if carry is None else carry)


def restore_variables(workdir: str, config: ml_collections.ConfigDict, state: str = 'kept',
                      seed_index: int | None = None):
  """(model, variables) of a run's `state` in `workdir`; variables for model.apply.

  state: 'kept' (default: the best state where training collapsed, else the last one; see
  latentadv/collapse_monitor.py) or 'last' (the latest checkpoint). A run of K > 1 seeds
  (config.num_seeds) holds K models: seed_index in [0, K) picks one (required).
  """
  seed_index = check_seed_index(config, seed_index)
  model = build_model(config)
  tx = make_optimizer(config.optim, learning_rate_schedule(config.optim, 1))
  image_shape = datasets.DATASETS[config.data.name].image_shape
  carry = init_carry(config, image_shape)
  abstract = jax.eval_shape(lambda rng: init_state(model, tx, rng, image_shape, carry),
                            jax.random.key(0))
  subdir = checkpoint.state_subdir(workdir, state, seed_index)
  stacked = seed_index is not None and subdir == 'checkpoints'  # a best state is one seed's
  if stacked:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((config.num_seeds, *x.shape),
                                                           x.dtype), abstract)
  # Onto one local device, whatever devices and processes wrote the checkpoint.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  restored = checkpoint.Checkpoints(workdir, every_steps=1, keep=1, subdir=subdir).restore(
      abstract)
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/{subdir}: train into this workdir '
                            'first (python -m latentadv.main --workdir=...).')
  restored_state, _ = restored
  if stacked:
    restored_state = jax.tree.map(lambda leaf: leaf[seed_index], restored_state)
  return model, restored_state.variables()


def check_seed_index(config: ml_collections.ConfigDict, seed_index: int | None) -> int | None:
  """seed_index checked against the run's config.num_seeds = K: None for K = 1 (0 is accepted
  too), an index in [0, K) for K > 1; raises ValueError saying how to fix it otherwise."""
  num_seeds = config.get('num_seeds', 1)
  if num_seeds == 1 and seed_index in (None, 0):
    return None
  if seed_index is None or not 0 <= seed_index < num_seeds:
    raise ValueError(f'seed_index {seed_index} is invalid: this run trained {num_seeds} '
                     f'seed(s) (config.num_seeds); pass seed_index in [0, {num_seeds}) '
                     f'(--seed_index on the command line), model k having seed config.seed + k.')
  return seed_index
