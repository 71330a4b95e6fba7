"""Writes megakernel_colab.ipynb (outputs cleared) from the cells below: the notebook's one source.

    python scripts/make_notebook.py          # then commit megakernel_colab.ipynb
A test checks that the committed notebook is what this script writes.
"""
import json
import os
import sys

CELLS = [
    ("markdown", """# Qwen3-0.6B in one CUDA kernel

A persistent megakernel runs the whole Qwen3-0.6B decode step (28 layers, final norm, LM head,
token choice) in one launch. This notebook checks your GPU, gets the weights, builds the kernel,
validates it against PyTorch, benchmarks it against the memory-bandwidth roofline and PyTorch,
and generates text.

**Colab:** Runtime > Change runtime type > a GPU (T4, A100 or H100), then Runtime > Run all."""),
    ("code", """# Parameters
MODEL_ID = "Qwen/Qwen3-0.6B"   # hub id or a local snapshot folder
MAX_CTX = 4096                  # KV-cache positions allocated (up to 40960)
PROJECT_SOURCE = ""             # pip source of this project when the notebook is opened alone,
                                # e.g. "git+https://github.com/OWNER/REPO"; unused inside a checkout
OFFLINE = False                 # True: no hub access; a random checkpoint of the real shapes

import os
OFFLINE = OFFLINE or os.environ.get("MEGAKERNEL_OFFLINE") == "1"
PROJECT_SOURCE = os.environ.get("MEGAKERNEL_SOURCE", PROJECT_SOURCE)"""),
    ("code", """# Install: inside a checkout use it as is; opened alone, fetch the project from PROJECT_SOURCE
import importlib.util, pathlib, subprocess, sys, tempfile
WORK = os.path.join(tempfile.gettempdir(), "megakernel_work")
os.makedirs(WORK, exist_ok=True)
nb = None
try:
    import megakernel
except ImportError:
    root = next((p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
                 if (p / "host" / "engine.py").exists() and (p / "pyproject.toml").exists()), None)
    if root is not None:  # the package `megakernel` is the folder host/
        spec = importlib.util.spec_from_file_location("megakernel", root / "host" / "__init__.py",
                                                      submodule_search_locations=[str(root / "host")])
        sys.modules["megakernel"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["megakernel"])
    elif PROJECT_SOURCE:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PROJECT_SOURCE], check=True)
try:
    from megakernel import notebook as nb
    print("megakernel", sys.modules["megakernel"].__version__, "from", os.path.dirname(sys.modules["megakernel"].__file__))
except ImportError:
    print("The megakernel package is not available: open this notebook inside a checkout of the project, "
          "or set PROJECT_SOURCE in the parameter cell. The cells below will say they are skipped.")"""),
    ("code", """# GPU: name, compute capability, memory, measured bandwidth (stops here, explained, without one)
READY = nb is not None and nb.gpu_check()"""),
    ("code", """# Weights: download Qwen3-0.6B and convert it to the kernel's flat format (random weights offline)
if not nb or nb.skipped(READY):
    pass
else:
    model = nb.prepare_model(MODEL_ID, OFFLINE, WORK)"""),
    ("code", """# Build the kernel for this GPU (nvcc; cached)
if not nb or nb.skipped(READY):
    pass
else:
    nb.build()"""),
    ("code", """# Validate against the float32 PyTorch reference (teacher-forced, random real-shape weights)
if not nb or nb.skipped(READY):
    pass
else:
    validation = nb.validate(steps=32)"""),
    ("code", """# Benchmark: tok/s against the roofline by context, time to first token, speedup over PyTorch
if not nb or nb.skipped(READY):
    pass
else:
    report = nb.benchmark(model["flat"], WORK, quick=True)"""),
    ("code", """# Generate: a streamed answer (sampling defaults from generation_config.json)
if not nb or nb.skipped(READY):
    pass
else:
    engine, tokenizer = nb.open_engine(model, MAX_CTX)
    nb.generate_demo(engine, tokenizer, "Explain in three sentences why batch-1 decoding is memory-bound.")"""),
    ("code", """# A short chat: the second turn reuses the KV cache of the first
if not nb or nb.skipped(READY):
    pass
else:
    nb.chat_demo(engine, tokenizer, ["Name a prime number between 10 and 20.", "And the next one after it?"])
    engine.close()"""),
]


def build() -> dict:
    cells = []
    for kind, src in CELLS:
        cell = {"cell_type": kind, "metadata": {}, "source": src.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {"cells": cells, "metadata": {"accelerator": "GPU", "colab": {"provenance": []},
                                         "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def render() -> str:
    nbj = build()
    for i, c in enumerate(nbj["cells"]):
        c["id"] = f"cell-{i}"
    return json.dumps(nbj, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "megakernel_colab.ipynb")
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render())
    os.replace(tmp, out)
    print(os.path.normpath(out), file=sys.stderr)
