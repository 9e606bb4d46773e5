"""Whether the attacks' step loops unroll: rolled unless a setting says otherwise.

A rolled loop (`lax.fori_loop`) traces and compiles one step; unrolled, the tracing and
compilation grow with the steps, and a warm persistent compilation cache saves only XLA's part
of them. With the models' convolution (models/convolution.py) a rolled step costs what an
unrolled one does on XLA:CPU too (docs/performance.md), so every backend rolls.

Settings (config.eval.attack_loops): 'rolled' (the default) or 'unrolled'; the attack
functions take the resulting bool as their `unroll` argument.
"""

LOOPS = ('rolled', 'unrolled')


def unroll_steps(setting: str = 'rolled') -> bool:
  """True if an attack's step loop should be unrolled under `setting` (one of LOOPS)."""
  if setting not in LOOPS:
    raise ValueError(f'Unknown loop setting {setting!r}; valid: {", ".join(LOOPS)}.')
  return setting == 'unrolled'
