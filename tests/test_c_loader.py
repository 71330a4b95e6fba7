"""The C side of the flat format (src/flat_file.h via libmegakernel.so), on the CPU.

The library loads without a GPU (the CUDA runtime is linked statically and only touches the
driver on the first CUDA call), so CI checks that the C reader accepts what Python writes and
refuses the same bad files with the same kind of message. Needs nvcc.
"""
import os
import shutil

import pytest

from megakernel import MegakernelError
from megakernel.fixtures import patch_flat_header, qwen3_06b_config, write_random_flat
from megakernel.launcher import build_library, load_library


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if not (os.path.exists("/usr/local/cuda/bin/nvcc") or __import__("shutil").which("nvcc")):
        pytest.skip("nvcc not found")
    os.environ.setdefault("MEGAKERNEL_CACHE", str(tmp_path_factory.mktemp("cache")))
    return load_library(build_library(arch="sm_80", quiet=True))


@pytest.fixture(scope="module")
def flat_06b(tmp_path_factory):
    """A real-shape (0.6B) random checkpoint converted once for this module (~1.2 GB)."""
    d = tmp_path_factory.mktemp("flat")
    return write_random_flat(str(d), seed=3)


def test_compiled_dims_are_the_configs(lib):
    c = qwen3_06b_config()
    assert lib.compiled_dims() == [c["vocab_size"], c["hidden_size"], c["intermediate_size"],
                                   c["num_hidden_layers"], c["num_attention_heads"],
                                   c["num_key_value_heads"], c["head_dim"], c["max_position_embeddings"]]


def test_c_reader_accepts_python_output(lib, flat_06b):
    lib.check_flat_file(flat_06b)


def _patched(src, dst, **fields):
    shutil.copyfile(src, dst)
    return patch_flat_header(dst, **fields)


@pytest.mark.parametrize("fields,fragment", [
    (dict(magic=b"GGUF\0\0\0\0"), "wrong magic"),
    (dict(version=7), "format version 7"),
    (dict(hidden_size=2048), "model dimensions"),
    (dict(rms_norm_eps=1e-5), "eps 1e-05"),
    (dict(payload_bytes=123), "truncated"),
])
def test_c_reader_refuses_bad_headers(lib, flat_06b, tmp_path, fields, fragment):
    bad = _patched(flat_06b, str(tmp_path / "bad.bin"), **fields)
    with pytest.raises(MegakernelError, match=fragment):
        lib.check_flat_file(bad)


def test_c_reader_refuses_other_model_size(lib, tmp_path):
    from megakernel.fixtures import tiny_config
    small = write_random_flat(str(tmp_path), tiny_config(), seed=1)
    with pytest.raises(MegakernelError, match="model dimensions"):
        lib.check_flat_file(small)
