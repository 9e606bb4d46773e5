"""JAX's persistent compilation cache, on by default for every entry point.

Every command (training, evaluation, eps_curve, export, the benchmarks) and the tests call
`enable_cache()` before they compile anything, so a program compiled once (a training step,
an attack at one batch size) is read back from disk by later runs instead of compiled again.

Where: `JAX_COMPILATION_CACHE_DIR` (JAX's own variable) when it is set, else
`$XDG_CACHE_HOME/latentadv/jax` (`~/.cache/latentadv/jax` without XDG_CACHE_HOME): one cache
per user, as JAX trusts what it reads there. `LATENTADV_COMPILATION_CACHE=0` (or false, off,
no) turns the default off: JAX's configuration is left as it is, which caches nothing unless
JAX_COMPILATION_CACHE_DIR is set. JAX stores programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s by default) to compile; its key covers the
program, the devices, the JAX and XLA versions and the compiler flags, so a changed program
compiles anew.
"""

import os
from collections.abc import Mapping

import jax

SWITCH = 'LATENTADV_COMPILATION_CACHE'
_OFF = ('0', 'false', 'off', 'no')


def cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
  """The cache directory that the environment `environ` asks for, None if the switch is off."""
  if environ.get(SWITCH, '1').strip().lower() in _OFF:
    return None
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return environ['JAX_COMPILATION_CACHE_DIR']
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'latentadv', 'jax')


def enable_cache(environ: Mapping[str, str] = os.environ) -> str | None:
  """Points JAX's persistent compilation cache at cache_dir(environ); returns that directory
  (None: switched off, JAX's configuration untouched). Call before the first compilation."""
  path = cache_dir(environ)
  if path is not None:
    jax.config.update('jax_compilation_cache_dir', path)
  return path
