"""Training methods by name. Each module has `default_config()` and `loss(...)`; see common.py."""

from latentadv.methods import fgsm
from latentadv.methods import fgsm_rs
from latentadv.methods import pgd
from latentadv.methods import slat
from latentadv.methods import standard

METHODS = {
    'standard': standard,
    'fgsm': fgsm,
    'fgsm_rs': fgsm_rs,
    'pgd': pgd,
    'slat': slat,
}
