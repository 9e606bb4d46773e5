"""The package works installed from a wheel, outside a checkout: its CLIs train, evaluate and
export with a recipe file given by path."""

import json
import os
import shutil
import site
import subprocess
import sys

from conftest import DATA_ROOT, REPO_ROOT


def _run(args, cwd, env, exit_codes=(0,)):
  """Runs args in cwd; returns stdout, failing the test with the output on another exit code."""
  done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode in exit_codes, (
      f'{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}')
  return done.stdout


def test_the_wheel_installs_and_its_clis_run_outside_the_checkout(tmp_path):
  # Build from a copy, so that the build leaves nothing in the checkout.
  source = tmp_path / 'source'
  shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'build', 'runs', '*.egg-info', '__pycache__', '.pytest_cache'))
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
        '--wheel-dir', str(tmp_path / 'dist'), str(source)], tmp_path, os.environ)
  wheel, = (tmp_path / 'dist').glob('latentadv-*.whl')

  # A fresh venv whose dependencies are this interpreter's packages (a path entry: the .pth
  # files there, such as an editable install of the checkout, are not run), nothing downloaded.
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], tmp_path, os.environ)
  python = str(venv / 'bin' / 'python')
  purelib = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                 tmp_path, os.environ).strip()
  with open(os.path.join(purelib, 'dependencies.pth'), 'w') as pth:
    pth.write('\n'.join(site.getsitepackages()) + '\n')
  env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
  _run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', str(wheel)], tmp_path, env)

  run = tmp_path / 'run'
  run.mkdir()
  installed = _run([python, '-c', 'import latentadv; print(latentadv.__file__)'], run, env)
  assert installed.startswith(str(venv)), installed

  workdir = str(run / 'workdir')
  _run([python, '-m', 'latentadv.main',
        f'--config={os.path.join(REPO_ROOT, "configs", "mnist_standard.py")}:smoke',
        f'--workdir={workdir}', '--config.data.source=local',
        f'--config.data.dir={os.path.abspath(os.path.join(DATA_ROOT, "mnist"))}',
        '--config.optim.epochs=1', '--config.train.eval_every_epochs=0',
        '--config.eval.n_examples=64'], run, env)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['method'] == 'standard' and results['final']['n_examples'] == 64

  before = set(os.listdir(workdir))
  _run([python, '-m', 'latentadv.evaluate', f'--workdir={workdir}',
        '--config.eval.n_examples=32'], run, env)
  records = []
  for name in sorted(set(os.listdir(workdir)) - before):
    if name.endswith('.json'):
      with open(os.path.join(workdir, name)) as f:
        records.append(json.load(f))
  assert any(record.get('n_examples') == 32 for record in records), records
  for cli in ('export', 'eps_curve'):  # absl's --help exits with 1 after the usage
    usage = _run([python, '-m', f'latentadv.{cli}', '--help'], run, env, exit_codes=(0, 1))
    assert os.path.join(purelib, 'latentadv', f'{cli}.py:') in usage, usage
