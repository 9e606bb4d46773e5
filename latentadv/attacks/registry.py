"""The evaluator's attacks by name, their settings sub-configs, and the suites.

ATTACKS maps each declared attack's name to its `Declaration` (attacks/attack.py); SETTINGS
maps each settings key to its defaults (config.eval.<key>, e.g. config.eval.apgd.steps).
A suite is a sequence of attack names run in order, each on the points the ones before it
left robust; SUITES names the suites of config.eval.suite: every attack alone, and
`autoattack` (apgd-ce -> apgd-t -> fab-t -> square, AutoAttack's "standard" version).
"""

from collections.abc import Sequence

import ml_collections

from latentadv.attacks import apgd
from latentadv.attacks import fab
from latentadv.attacks import loops
from latentadv.attacks import pgd
from latentadv.attacks import square
from latentadv.attacks.attack import Attack

ATTACKS = {declaration.name: declaration for declaration in (
    pgd.PGD, pgd.BPDA, apgd.APGD_CE, apgd.APGD_T, fab.FAB_T, square.SQUARE)}
SETTINGS = {declaration.settings_key: declaration.default_config
            for declaration in ATTACKS.values()}
SUITES = {**{name: (name,) for name in ATTACKS},
          'autoattack': ('apgd-ce', 'apgd-t', 'fab-t', 'square')}
# Suites whose gradient attacks differentiate the BPDA surrogate of a model with a
# gradient-masking input layer (the soft quantiser), as an adaptive evaluation must.
ADAPTIVE_SUITES = ('autoattack',)


def attack_names(suite: str | Sequence[str]) -> tuple[str, ...]:
  """The attacks of `suite`: a name in SUITES, or a sequence of distinct names in ATTACKS."""
  if isinstance(suite, str):
    if suite not in SUITES:
      raise ValueError(f'Unknown suite {suite!r}; valid suites: {", ".join(SUITES)}.')
    return SUITES[suite]
  unknown = [name for name in suite if name not in ATTACKS]
  if unknown or not suite or len(set(suite)) < len(suite):
    raise ValueError(f'Suite {list(suite)} must name distinct attacks, each one of '
                     f'{", ".join(ATTACKS)}.')
  return tuple(suite)


def build(name: str, eval_config: ml_collections.ConfigDict, eps: float, *,
          straight_through: bool = False) -> Attack:
  """The attack `name` with its settings from eval_config.<settings key>, in the threat
  model eval_config.norm with radius eps, its loops as eval_config.attack_loops."""
  declaration = ATTACKS[name]
  return declaration.build(eval_config[declaration.settings_key], eps=eps,
                           norm=eval_config.norm,
                           unroll=loops.unroll_steps(eval_config.attack_loops),
                           straight_through=straight_through)


def build_suite(suite: str | Sequence[str], eval_config: ml_collections.ConfigDict,
                eps: float, *, has_quantiser: bool = False) -> list[Attack]:
  """The attacks of `suite` (see attack_names) as `build` makes them; in an adaptive suite
  the gradient attacks differentiate the BPDA surrogate when the model has a
  gradient-masking input quantiser (`has_quantiser`)."""
  adaptive = has_quantiser and isinstance(suite, str) and suite in ADAPTIVE_SUITES
  return [build(name, eval_config, eps,
                straight_through=adaptive and ATTACKS[name].uses_gradients)
          for name in attack_names(suite)]
