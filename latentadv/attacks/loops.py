"""Whether the attacks' step loops unroll: rolled unless a setting says otherwise.

A rolled loop (`lax.fori_loop`) traces and compiles one step; unrolled, the tracing and
compilation grow with the steps, and a warm persistent compilation cache saves only XLA's part
of them. With the models' convolution (models/convolution.py) a rolled step costs what an
unrolled one does on XLA:CPU too (docs/performance.md), so every backend rolls.

Settings (config.eval.attack_loops, or an attack's `unroll` argument): 'auto' (rolled, the
default), 'rolled', 'unrolled', or a bool.
"""

LOOPS = ('auto', 'unrolled', 'rolled')


def unroll_steps(setting: bool | str = 'auto') -> bool:
  """True if an attack's step loop should be unrolled under `setting` (a bool is returned as
  it is): only for 'unrolled'."""
  if isinstance(setting, bool):
    return setting
  if setting not in LOOPS:
    raise ValueError(f'Unknown loop setting {setting!r}; valid: {", ".join(LOOPS)} or a bool.')
  return setting == 'unrolled'
