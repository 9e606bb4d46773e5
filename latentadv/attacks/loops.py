"""Whether the attacks' step loops unroll: rolled unless a setting says otherwise.

A rolled loop (`lax.fori_loop`) traces and compiles one step; unrolled, 100 APGD or FAB-T
steps take a minute or more of tracing and compilation per program and batch size on a CPU,
most of which a warm persistent compilation cache does not save. With the models'
convolution (models/convolution.py) a rolled step costs what an unrolled one does on every
backend (docs/performance.md), so every backend rolls.

Settings (config.eval.attack_loops): 'rolled' (the default) or 'unrolled'; the attack
functions take the resulting bool as their `unroll` argument.
"""

LOOPS = ('rolled', 'unrolled')


def unroll_steps(setting: str = 'rolled') -> bool:
  """True if an attack's step loop should be unrolled under `setting` (one of LOOPS)."""
  if setting not in LOOPS:
    raise ValueError(f'Unknown loop setting {setting!r}; valid: {", ".join(LOOPS)}.')
  return setting == 'unrolled'
