"""notebooks/quickstart.ipynb runs top to bottom (nbclient), so it never rots.

The kernel is this interpreter, through a kernel spec written into a temporary
JUPYTER_PATH: no kernel needs to be installed (``pip install -e .[test]`` into a fresh venv
is enough) and whatever other "python3" kernel a machine has cannot be picked by mistake.
"""

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
KERNEL = "catdog-features-test"


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
    """A kernel spec running ``sys.executable -m ipykernel_launcher``, found via JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "catdog-features test kernel", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return KERNEL


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook with outputs cleared"


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, this_python_kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=this_python_kernel, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    seconds = time.perf_counter() - start

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # the second extraction is a cache hit, the sweep ran its trials, the submission was written
    assert "cache hits {'VGG16': True, 'ResNet50': True}" in text
    assert "top 2 of 4 trials" in text or "of 4 trials" in text
    assert "chosen:" in text
    assert "id,label" in text
    # the training curves and the top-loss grid are shown inline as PNGs
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"expected the curves and the top-loss grid inline; outputs: {[o.output_type for o in outputs]}"
    assert seconds < 240, f"the quickstart took {seconds:.0f} s; keep it on tiny settings"
