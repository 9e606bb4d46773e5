"""Whether the attacks' step loops unroll: by backend, unless a setting says otherwise.

XLA:CPU runs the input-gradient convolutions of a conv net ~4x slower inside a `while` loop
than unrolled (their kernels keep an `01oi` layout there; PreActResNet-18, batch 32: 2.0 s vs
0.43 s per APGD step), so on the CPU the gradient attacks (PGD, APGD, APGD-T runs, FAB-T runs)
unroll their steps, paying ~70-85 s of compilation for 100 steps (vs ~4 s rolled) per program
and batch size; the persistent compilation cache (latentadv/compilation.py) then saves XLA's
compilation but not JAX's tracing and lowering of the 100 steps (README, Speed). The slowdown comes from XLA:CPU's convolution layouts; on GPUs and
TPUs the loops roll, so an attack compiles one step instead of 100 (their in-loop speed is not
measured in this repository).

Settings (config.eval.attack_loops, or an attack's `unroll` argument): 'auto' (unrolled on
the CPU backend, rolled on any other), 'unrolled', 'rolled', or a bool.
"""

import jax

LOOPS = ('auto', 'unrolled', 'rolled')


def unroll_steps(setting: bool | str = 'auto') -> bool:
  """True if an attack's step loop should be unrolled under `setting` (a bool is returned as
  it is); 'auto' decides from jax.default_backend(): unrolled on 'cpu' only."""
  if isinstance(setting, bool):
    return setting
  if setting not in LOOPS:
    raise ValueError(f'Unknown loop setting {setting!r}; valid: {", ".join(LOOPS)} or a bool.')
  if setting == 'auto':
    return jax.default_backend() == 'cpu'
  return setting == 'unrolled'
