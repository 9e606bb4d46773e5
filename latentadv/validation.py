"""Checks a run's config before anything is built; every error names the key and the fix."""

import ml_collections
import numpy as np

from latentadv import methods
from latentadv import models
from latentadv import parallel
from latentadv.attacks import loops
from latentadv.attacks import norms
from latentadv.attacks import registry as attacks_registry
from latentadv.attacks.losses import LOSSES
from latentadv.data import datasets
from latentadv.data import readers


class ConfigError(ValueError):
  """An invalid value in a run's config."""


def _require(condition: bool, key: str, value, expected: str):
  if not condition:
    raise ConfigError(f'config.{key} = {value!r} is invalid: expected {expected}.')


def _one_of(config, key: str, choices):
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(value in choices, key, value, f'one of {sorted(choices)}')


def validate(config: ml_collections.ConfigDict):
  """Raises ConfigError for the first invalid value in `config`."""
  _require(isinstance(config.num_seeds, int) and config.num_seeds >= 1, 'num_seeds',
           config.num_seeds, 'an integer >= 1 (models trained side by side in one program)')
  _one_of(config, 'seed_sharding', parallel.SEED_SHARDINGS)
  _one_of(config, 'seed_loop', parallel.SEED_LOOPS)
  _require(not (config.train.collapse_stop and config.num_seeds > 1), 'train.collapse_stop',
           config.train.collapse_stop, 'False when config.num_seeds > 1 (the seeds of one program '
           'train in step; each seed keeps its best state instead)')
  _one_of(config, 'data.name', datasets.DATASETS)
  _one_of(config, 'data.source', ('tfds', 'local'))
  _one_of(config, 'data.pipeline', readers.PIPELINES)
  if datasets.DATASETS[config.data.name].variable_size:
    _require(config.data.pipeline == 'stream', 'data.pipeline', config.data.pipeline,
             f"'stream' for {config.data.name} (its images differ in size and do not fit in "
             'host memory)')
  _one_of(config, 'model.name', models.MODELS)
  _one_of(config, 'model.dtype', models.DTYPES)
  _one_of(config, 'model.preact_resnet18.init', models.CONV_INITS)
  _one_of(config, 'model.resnet50.init', models.RESNET50_INITS)
  _one_of(config, 'method.name', methods.METHODS)
  _one_of(config, 'method.attack_bn', ('train', 'eval'))
  _one_of(config, 'optim.optimizer', ('sgd', 'adam'))
  _one_of(config, 'optim.schedule', ('cyclic', 'piecewise', 'cosine', 'constant', 'interpolate'))
  fractions = [point[0] for point in config.optim.interpolate_points]
  _require(fractions[0] == 0 and fractions[-1] == 1 and all(np.diff(fractions) > 0),
           'optim.interpolate_points', config.optim.interpolate_points,
           '(fraction, LR scale) pairs with fractions increasing from 0 to 1')
  _one_of(config, 'eval.suite', attacks_registry.SUITES)
  _one_of(config, 'eval.norm', norms.NORMS)
  _one_of(config, 'eval.attack_loops', loops.LOOPS)
  _one_of(config, 'method.norm', norms.NORMS)
  if config.data.source == 'local':
    _require(bool(config.data.dir), 'data.dir', config.data.dir,
             'a directory with the dataset files when data.source is "local"')
  _require(config.method.eps >= 0, 'method.eps', config.method.eps, 'eps >= 0 (pixel units)')
  _require(config.data.crop_padding >= 0, 'data.crop_padding', config.data.crop_padding,
           'an integer >= 0')
  _require(config.data.num_train_examples >= 0, 'data.num_train_examples',
           config.data.num_train_examples, 'an integer >= 0 (0 = all)')
  for key in ('optim.batch_size', 'optim.epochs', 'eval.batch_size',
              'eval.periodic_pgd_steps', 'eval.periodic_pgd_restarts',
              'eval.periodic_n_examples', 'train.log_every_steps',
              'train.checkpoint_every_steps', 'train.checkpoints_to_keep',
              'data.stream_threads', 'data.stream_prefetch'):
    section, name = key.split('.')
    value = config[section][name]
    _require(isinstance(value, int) and value > 0, key, value, 'an integer > 0')
  _require(config.optim.learning_rate > 0, 'optim.learning_rate', config.optim.learning_rate,
           'a number > 0')
  _require(config.optim.weight_decay >= 0, 'optim.weight_decay', config.optim.weight_decay,
           'a number >= 0')
  _require(0 <= config.optim.cyclic_momentum_low <= config.optim.momentum,
           'optim.cyclic_momentum_low', config.optim.cyclic_momentum_low,
           f'a momentum in [0, optim.momentum = {config.optim.momentum}]')
  _require(0 < config.optim.cyclic_peak < 1, 'optim.cyclic_peak', config.optim.cyclic_peak,
           'a fraction in (0, 1)')
  _validate_attack_settings(config)
  _require(config.eval.n_examples >= 0, 'eval.n_examples', config.eval.n_examples,
           'an integer >= 0 (0 = the whole test set)')
  _validate_soft_quant(config)
  _validate_collapse_monitor(config.train, config.data)
  _validate_method(config)


_NORM_NAMES = {'linf': 'L-inf', 'l2': 'L2'}


def _validate_method(config: ml_collections.ConfigDict):
  """The keys of method config.method.name, as its declaration (methods/base.py) says: a
  threat model among its `norms`, numbers >= 0 in its sub-config, and its own `check`."""
  name = config.method.name
  method = methods.METHODS[name]
  with_l2 = sorted(other.name for other in methods.METHODS.values() if 'l2' in other.norms)
  defined = ' and '.join(_NORM_NAMES.get(norm, norm) for norm in method.norms)
  _require(config.method.norm in method.norms, 'method.norm', config.method.norm,
           f'one of {list(method.norms)}: method {name} defines only the {defined} threat '
           f"model (methods with an L2 version: {', '.join(with_l2)})")
  for key, value in config.method[name].items():
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      _require(value >= 0, f'method.{name}.{key}', value, 'a number >= 0')
  if method.check is not None:
    method.check(config, _require)


def _validate_attack_settings(config: ml_collections.ConfigDict):
  """Every attack's settings (config.eval.<key>, attacks/registry.py): counts (steps,
  restarts, targets, queries) are integers > 0; PGD's loss is one of LOSSES and its step
  size > 0; Square's p_init is a fraction in (0, 1]."""
  eval_config = config.eval
  for key in attacks_registry.SETTINGS:
    for name, value in eval_config[key].items():
      if isinstance(value, int) and not isinstance(value, bool):
        _require(value > 0, f'eval.{key}.{name}', value, 'an integer > 0')
  _one_of(config, 'eval.pgd.loss', LOSSES)
  _require(eval_config.pgd.step_size > 0, 'eval.pgd.step_size', eval_config.pgd.step_size,
           'a number > 0 (a fraction of eps)')
  _require(0 < eval_config.square.p_init <= 1, 'eval.square.p_init',
           eval_config.square.p_init, 'a fraction in (0, 1]')


def _validate_soft_quant(config: ml_collections.ConfigDict):
  """The soft-quantisation layer's keys (model.soft_quant)."""
  levels = config.model.soft_quant.levels
  _require(isinstance(levels, int) and levels >= 0, 'model.soft_quant.levels', levels,
           'an integer >= 0 (0 = no quantiser)')
  _require(config.model.soft_quant.temperature > 0, 'model.soft_quant.temperature',
           config.model.soft_quant.temperature, 'a number > 0 (pixel units)')


_MIN_MONITOR_EXAMPLES = 100


def _validate_collapse_monitor(train: ml_collections.ConfigDict,
                               data_config: ml_collections.ConfigDict):
  """The catastrophic-overfitting monitor's keys (latentadv/collapse_monitor.py)."""
  examples = train.collapse_monitor_examples
  _require(isinstance(examples, int) and (examples == 0 or examples >= _MIN_MONITOR_EXAMPLES),
           'train.collapse_monitor_examples', examples,
           f'0 (monitor off) or at least {_MIN_MONITOR_EXAMPLES}: on fewer examples one example '
           'moves the accuracy by 1 % or more and noise reads as collapse')
  training_examples = (data_config.num_train_examples
                       or datasets.DATASETS[data_config.name].train_size)
  _require(examples <= training_examples, 'train.collapse_monitor_examples', examples,
           f'at most the {training_examples} training examples it is taken from: lower it or '
           'raise config.data.num_train_examples')
  _require(0 < train.collapse_drop <= 1, 'train.collapse_drop', train.collapse_drop,
           'an accuracy drop in (0, 1]')
  _require(0 <= train.collapse_relative_drop <= 1, 'train.collapse_relative_drop', train.collapse_relative_drop,
           'a fraction of the best accuracy in [0, 1]')
  _require(not train.collapse_stop or examples > 0, 'train.collapse_stop', train.collapse_stop,
           'False while train.collapse_monitor_examples is 0, or set train.collapse_monitor_examples > 0 '
           '(e.g. 512) to monitor')
