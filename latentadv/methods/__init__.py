"""Training methods by name. Each module has `default_config()` and `loss(...)`; see common.py."""

from latentadv.methods import backward_smoothing
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

METHODS = {
    'standard': standard,
    'fgsm': fgsm,
    'fgsm_rs': fgsm_rs,
    'pgd': pgd,
    'slat': slat,
    'n_fgsm': n_fgsm,
    'gradalign': gradalign,
    'trades': trades,
    'backward_smoothing': backward_smoothing,
    'slat_ga': slat_ga,
    'eae': eae,
    'single_step_reg': single_step_reg,
    'free': free,
    'soft_quant': soft_quant,
}
