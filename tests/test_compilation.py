"""Tests for the persistent compilation cache switch and the attacks' loop setting."""

import os

import jax
import pytest

from latentadv import compilation
from latentadv.attacks import loops


def test_cache_is_per_user_by_default():
  assert compilation.cache_dir({}) == os.path.join(
      os.path.expanduser('~'), '.cache', 'latentadv', 'jax')
  assert compilation.cache_dir({'XDG_CACHE_HOME': '/xdg'}) == '/xdg/latentadv/jax'


def test_jax_own_variable_wins():
  environ = {'XDG_CACHE_HOME': '/xdg', 'JAX_COMPILATION_CACHE_DIR': '/jax_cache'}
  assert compilation.cache_dir(environ) == '/jax_cache'


@pytest.mark.parametrize('value', ['0', 'false', 'OFF', ' no '])
def test_switch_turns_the_cache_off(value):
  environ = {compilation.SWITCH: value, 'JAX_COMPILATION_CACHE_DIR': '/jax_cache'}
  assert compilation.cache_dir(environ) is None
  before = jax.config.jax_compilation_cache_dir
  assert compilation.enable_cache(environ) is None
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.parametrize('value', ['1', 'on', ''])
def test_other_switch_values_keep_it_on(value):
  assert compilation.cache_dir({compilation.SWITCH: value, 'XDG_CACHE_HOME': '/x'}) == (
      '/x/latentadv/jax')


def test_enable_cache_points_jax_at_the_directory(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  try:
    assert compilation.enable_cache({'XDG_CACHE_HOME': str(tmp_path)}) == str(
        tmp_path / 'latentadv' / 'jax')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'latentadv' / 'jax')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


def test_tests_run_with_the_cache_of_the_environment():
  # Switched off, conftest leaves JAX's own setting: JAX_COMPILATION_CACHE_DIR or none.
  expected = compilation.cache_dir() or os.environ.get('JAX_COMPILATION_CACHE_DIR') or None
  assert jax.config.jax_compilation_cache_dir == expected


def test_loops_roll_unless_asked_to_unroll():
  assert not loops.unroll_steps() and not loops.unroll_steps('rolled')
  assert loops.unroll_steps('unrolled')
  for setting in ('sometimes', 'auto'):
    with pytest.raises(ValueError, match=setting):
      loops.unroll_steps(setting)
