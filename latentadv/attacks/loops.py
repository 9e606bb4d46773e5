"""Whether the attacks' step loops unroll: rolled unless a setting says otherwise.

A rolled loop (`lax.fori_loop`) traces and compiles one step; unrolled, 100 APGD or FAB-T steps
cost a minute or more of tracing and compilation per program and batch size on a CPU, most of
which a warm persistent compilation cache does not save. Rolled loops used to run several times
slower on XLA:CPU, whose input-gradient convolutions inside a `while` loop missed the library
kernel; the models' convolution (models/convolution.py) gives them the library form, after
which a rolled step costs what an unrolled one does (benchmarks/attack_loops.py), so every
backend rolls.

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
