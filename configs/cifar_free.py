"""Free-AT (m = 8) on CIFAR-10, PreActResNet-18, eps 8/255, 30 step-epochs (30 / 8 data passes)."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py).

  optim.epochs counts optimizer steps in epochs: the run costs natural training for that many
  epochs and passes over the data epochs / replays times (Free-AT's N_ep / m).
  """
  config = default.get_config()
  config.method.name = 'free'
  config.method.free.replays = 8
  return default.apply_preset(default.monitor_collapse(config), preset)
