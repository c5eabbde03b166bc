"""The example notebooks run (nbclient, a kernel on this very Python), and an Explanation
displays itself: panels as image/png and HTML with the class name and probability."""
import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "examples" / "notebooks"
DATASET = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel spec that runs this interpreter (the test venv), whatever else is installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "vitx-test-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vitx test", "language": "python"}))
    return root


def execute(name, kernel, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="vitx-test-python",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def outputs(notebook):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.slow
def test_quickstart_runs_and_explanations_render(kernel, monkeypatch):
    notebook = execute("quickstart.ipynb", kernel, monkeypatch)
    rich = [o for o in outputs(notebook) if "data" in o]
    explanations = [o for o in rich if o["data"].get("text/plain", "").startswith("Explanation(")]
    assert len(explanations) >= 6
    for output in explanations:
        assert "image/png" in output["data"] and "text/html" in output["data"]
        assert " %" in output["data"]["text/html"] and "p = " in output["data"]["text/html"]
    assert any("Ankle boot" in o["data"]["text/html"] for o in explanations)  # class names, not indices
    report = [o for o in rich if "<iframe" in o["data"].get("text/html", "")]
    assert report and "vitx-explorer" in report[0]["data"]["text/html"]


@pytest.mark.slow
def test_plugin_notebook_runs(kernel, monkeypatch):
    notebook = execute("writing_a_plugin.ipynb", kernel, monkeypatch)
    text = " ".join(o.get("data", {}).get("text/plain", "") for o in outputs(notebook))
    assert "'last_layer'" in text and "pass" in text


@pytest.mark.slow
@pytest.mark.skipif(not DATASET.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_reference_study_notebook_runs(kernel, monkeypatch):
    notebook = execute("reference_study.ipynb", kernel, monkeypatch)
    assert sum("image/png" in o.get("data", {}) for o in outputs(notebook)) >= 6
