"""TRADES on MNIST, the CNN of Wong et al., eps 0.3, 40 KL steps of 0.01, Adam, cyclic LR peak 5e-3, 10 epochs, batch 100."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.mnist(base_config.get_config())
  base_config.set_method(config, 'trades')
  config.method.attack_bn = 'eval'  # as the authors' code: the KL attack runs model.eval()
  config.method.trades.steps = 40
  config.method.trades.step_size = 0.01
  return base_config.apply_preset(config, preset)
