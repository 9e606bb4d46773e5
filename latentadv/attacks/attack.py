"""What an attack module declares (`Declaration`) and what the evaluator runs (`Attack`).

An attack module declares one `Declaration` per attack it provides: the name a suite lists,
the settings sub-config it reads (`config.eval.<settings_key>`, whose defaults
`default_config` returns; attacks of one family share it, e.g. apgd-ce and apgd-t read
config.eval.apgd) and `build`, which binds the settings, the radius, the threat model and
the loop setting into an `Attack`. attacks/registry.py collects the declarations.
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_collections

# fooled(logits_fn, x (B, H, W, C), y (B,), rng, run) -> (B,) bool, or (fooled (B,) bool,
# norm (B,)) for an attack with a norm_key; run is a traced int32.
FooledFn = Callable[..., jax.Array | tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Attack:
  """One attack of a suite: `runs` calls of `fooled`, each with its own key and run index.

  `settings` is the record of what it runs (written into the evaluation's JSON).
  `straight_through` makes the attack differentiate the model's BPDA surrogate. With a
  `norm_key`, `fooled` also returns the norm (in the attack's threat model) of the
  adversarial point each example got (inf if none), and the evaluator stores the smallest
  over the runs under that key.
  """
  name: str
  runs: int
  fooled: FooledFn
  settings: dict
  straight_through: bool = False
  norm_key: str = ''


# build(settings, eps=..., norm=..., unroll=..., straight_through=...) -> Attack
BuildFn = Callable[..., Attack]


@dataclasses.dataclass(frozen=True)
class Declaration:
  """An attack as its module declares it.

  name: its name in suites, records and per-example arrays (fooled_by_<name>).
  settings_key: its settings sub-config, config.eval.<settings_key>.
  default_config: () -> the default settings (a ConfigDict of plain values).
  build: (settings, *, eps, norm, unroll, straight_through) -> Attack, with settings the
    sub-config, eps the radius in the threat model `norm` ('linf' or 'l2'), unroll whether
    its step loops unroll and straight_through whether it differentiates the model's BPDA
    surrogate (an attack without gradients ignores it).
  uses_gradients: False for score-based attacks, which never differentiate the model.
  """
  name: str
  settings_key: str
  default_config: Callable[[], ml_collections.ConfigDict]
  build: BuildFn
  uses_gradients: bool = True
