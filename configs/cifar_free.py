"""Free-AT (m = 8) on CIFAR-10, PreActResNet-18, eps 8/255, 30 step-epochs (30 / 8 data passes)."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py).

  optim.epochs counts optimizer steps in epochs: the run costs natural training for that many
  epochs and passes over the data epochs / replays times (Free-AT's N_ep / m).
  """
  config = base_config.get_config()
  base_config.set_method(config, 'free')
  config.method.free.replays = 8
  return base_config.apply_preset(config, preset)
