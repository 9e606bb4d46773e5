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
from latentadv import data
from latentadv import models


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, checkpointed as a whole."""
  step: jax.Array
  params: Any
  model_state: Any  # non-trainable collections, e.g. {'batch_stats': ...}
  opt_state: Any

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
  return optax.constant_schedule(peak)


def make_optimizer(optim: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum or Adam, with weight decay added to the gradient (as in PyTorch)."""
  if optim.optimizer == 'adam':
    step_rule = optax.adam(schedule)
  else:
    step_rule = optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov)
  return optax.chain(optax.add_decayed_weights(optim.weight_decay), step_rule)


def build_model(config: ml_collections.ConfigDict):
  """The Flax model named by config.model, normalised for config.data's dataset."""
  info = data.DATASETS[config.data.name]
  return models.create_model(config.model.name, config.model[config.model.name].to_dict(),
                             num_classes=info.num_classes, mean=info.mean, std=info.std)


def init_state(model, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, ...]) -> TrainState:
  """A fresh TrainState for images of shape (H, W, C)."""
  variables = dict(models.init_variables(model, rng, (1, *image_shape)))
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=tx.init(params))


def restore_variables(workdir: str, config: ml_collections.ConfigDict):
  """(model, variables) of the latest checkpoint in `workdir`; variables for model.apply."""
  model = build_model(config)
  tx = make_optimizer(config.optim, learning_rate_schedule(config.optim, 1))
  image_shape = data.DATASETS[config.data.name].image_shape
  abstract = jax.eval_shape(lambda rng: init_state(model, tx, rng, image_shape),
                            jax.random.key(0))
  restored = checkpoint.Checkpoints(workdir, every_steps=1, keep=1).restore(abstract)
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints: train into this workdir '
                            'first (python -m latentadv.main --workdir=...).')
  state, _ = restored
  return model, state.variables()
