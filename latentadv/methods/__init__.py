"""Training methods by name: the registry of `Method` declarations (methods/base.py).

Each module below declares its method as `METHOD`; `register` adds any other declaration
(see docs/adding_a_method.md). Register a method before building its config
(base_config.get_config() gives every registered method its sub-config).
"""

from latentadv.methods import backward_smoothing
from latentadv.methods import base
from latentadv.methods import eae
from latentadv.methods import fgsm
from latentadv.methods import fgsm_rs
from latentadv.methods import free
from latentadv.methods import gradalign
from latentadv.methods import n_fgsm
from latentadv.methods import pgd
from latentadv.methods import single_step_reg
from latentadv.methods import slat
from latentadv.methods import slat_ga
from latentadv.methods import soft_quant
from latentadv.methods import standard
from latentadv.methods import trades
from latentadv.methods.base import Carry
from latentadv.methods.base import Method

__all__ = ['METHODS', 'Carry', 'Method', 'register']

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` to METHODS under method.name and returns it.

  Raises ValueError if the name is taken, is not a Python identifier, or is one of the keys
  that config.method shares between methods (base.SHARED_KEYS).
  """
  if not isinstance(method, Method):
    raise TypeError(f'register expects a latentadv.methods.Method, got {type(method).__name__}.')
  if not method.name.isidentifier() or method.name in base.SHARED_KEYS:
    raise ValueError(f'Method name {method.name!r} is invalid: it names config.method.<name>, '
                     f'so it must be an identifier other than {", ".join(base.SHARED_KEYS)}.')
  if method.name in METHODS:
    raise ValueError(f'A method named {method.name!r} is already registered; pick another name.')
  METHODS[method.name] = method
  return method


for _module in (standard, fgsm, fgsm_rs, pgd, slat, n_fgsm, gradalign, trades,
                backward_smoothing, slat_ga, eae, single_step_reg, free, soft_quant):
  register(_module.METHOD)
del _module
