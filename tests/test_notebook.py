"""The quickstart notebook runs headless from top to bottom on the smoke preset."""

import json
import os
import sys

import nbclient
import nbformat

from conftest import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, 'notebooks', 'quickstart.ipynb')


def _kernel_check_cell() -> nbformat.NotebookNode:
  """A first cell that stops the run unless the kernel is this interpreter's environment."""
  return nbformat.v4.new_code_cell(
      'import sys\n'
      f'assert sys.prefix == {sys.prefix!r}, f"kernel runs {{sys.prefix}}, not {sys.prefix!r}"')


def _image_outputs(notebook: nbformat.NotebookNode, tag: str) -> list:
  """The image/png outputs of the code cell tagged `tag`."""
  cells = [cell for cell in notebook.cells if tag in cell.metadata.get('tags', [])]
  assert len(cells) == 1, f'expected one cell tagged {tag!r}, found {len(cells)}'
  return [output for output in cells[0].outputs if 'image/png' in output.get('data', {})]


def test_committed_without_outputs():
  """Every code cell of the committed notebook is cleared (small, diffable files)."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  code_cells = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert code_cells
  for cell in code_cells:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_quickstart_runs_on_smoke_preset(tmp_path, monkeypatch, data_root):
  """Executes every cell in a python3 kernel of this environment; checks the runs it wrote
  (results, AutoAttack-style evaluation, eps curve) and the inline figures."""
  workdir = tmp_path / 'runs'
  monkeypatch.setenv('LATENTADV_NOTEBOOK_PRESET', 'smoke')
  monkeypatch.setenv('LATENTADV_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.setenv('LATENTADV_NOTEBOOK_DATA_DIR', os.path.join(data_root, 'mnist'))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.insert(0, _kernel_check_cell())

  nbclient.NotebookClient(notebook, kernel_name='python3', timeout=600,
                          resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()

  for method in ('slat', 'fgsm_rs'):
    run = workdir / 'smoke' / method
    with open(run / 'results.json') as f:
      results = json.load(f)
    assert results['method'] == method
    assert results['state'] == results['kept_state']['state'] in ('last', 'best')
    assert results['clean_accuracy'] == results['kept_state']['final']['clean_accuracy']
    assert results['robust_accuracy'] == results['kept_state']['final']['robust_accuracy']
    assert [record['epoch'] for record in results['history']] == [1, 2]
    with open(run / 'eval_autoattack.json') as f:
      evaluation = json.load(f)
    assert evaluation['n_examples'] == 64
    assert evaluation['robust_accuracy'] <= evaluation['clean_accuracy']
  assert (workdir / 'smoke' / 'eps_curve.png').stat().st_size > 0
  assert _image_outputs(notebook, 'plot-history')
  assert _image_outputs(notebook, 'plot-eps-curve')
