"""Test set-up: 8 virtual CPU devices (multi-device code paths run on any machine)."""

import os

import jax
import pytest

jax.config.update('jax_num_cpu_devices', 8)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.path.join(REPO_ROOT, '..', 'shared', 'data')


@pytest.fixture(scope='session')
def data_root() -> str:
  """The directory with the canonical dataset files (mnist/, fashion_mnist/, cifar10/)."""
  return DATA_ROOT
