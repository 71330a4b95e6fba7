"""megakernel_colab.ipynb: it is what scripts/make_notebook.py writes (outputs cleared), and it
executes top to bottom with nbclient. Without a GPU (CI) the GPU cell must explain what is
needed and every later cell must skip cleanly; with one (MEGAKERNEL_NOTEBOOK_GPU=1, offline
mode) every step runs."""
import importlib.util
import os

import pytest

from conftest import gpu_available

ROOT = os.path.join(os.path.dirname(__file__), "..")
NB = os.path.join(ROOT, "megakernel_colab.ipynb")


def test_committed_notebook_is_generated_and_cleared():
    spec = importlib.util.spec_from_file_location("make_notebook", os.path.join(ROOT, "scripts", "make_notebook.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(NB, encoding="utf-8") as f:
        assert f.read() == mod.render(), "run python scripts/make_notebook.py"


def _execute(env_extra, timeout):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NB, as_version=4)
    old = {k: os.environ.get(k) for k in env_extra}
    os.environ.update(env_extra)
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": ROOT}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        if os.environ.get("MEGAKERNEL_NOTEBOOK_OUT"):  # keep the executed notebook (gpu_check's record)
            nbformat.write(nb, os.environ["MEGAKERNEL_NOTEBOOK_OUT"])
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        texts.append("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
    return texts


@pytest.mark.skipif(gpu_available(), reason="the no-GPU path; the GPU run is test_notebook_runs_on_gpu")
def test_notebook_without_gpu_explains_and_skips():
    out = _execute({"MEGAKERNEL_OFFLINE": "1"}, timeout=300)
    assert "needs an NVIDIA GPU runtime" in out[2]
    assert all(o.strip().startswith("skipped: no usable GPU") for o in out[3:])


@pytest.mark.skipif(os.environ.get("MEGAKERNEL_NOTEBOOK_GPU") != "1", reason="set MEGAKERNEL_NOTEBOOK_GPU=1 on a GPU")
def test_notebook_runs_on_gpu():
    out = _execute({"MEGAKERNEL_OFFLINE": "1"}, timeout=1800)
    assert "GPU:" in out[2] and "random checkpoint" in out[3]
    assert "VALIDATION PASSED" in out[5] and "% of roofline" in out[6]
    assert "tok/s" in out[7] and "positions in the KV cache" in out[8]
