"""Bulk prefill (host/prefill.py) against the reference's KV cache, on the CPU.

The prefill reads the flat file's fused tensors (wqkv, interleaved wgu) and writes the kernel's
cache layout (layers, kv_heads, ctx, head_dim); the reference reads HF tensors and keeps
(layers, ctx, kv_heads, head_dim). Same random checkpoint, fresh seeds each run.
"""
import os

import pytest
import torch

from megakernel import MegakernelError
from megakernel.config import ModelConfig
from megakernel.fixtures import tiny_config, write_random_flat
from megakernel.prefill import Prefill
from megakernel.reference import Qwen3Reference
from megakernel.weight_loader import FlatFile


def _setup(tmp_path, max_ctx, dtype):
    seed = int.from_bytes(os.urandom(2), "little")
    cfg_d = tiny_config(tied=bool(seed % 2))
    flat = write_random_flat(str(tmp_path), cfg_d, seed=seed, embed_std=1.0)
    with FlatFile(flat) as f:
        weights = {n: f.tensor(n).clone() for n in f.entries}
        sd = f.to_hf_state_dict()
    cfg = ModelConfig.from_dict(cfg_d)
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, max_ctx, cfg.head_dim)
    k = torch.full(shape, float("nan"), dtype=dtype)  # poisoned: every read position must be written
    v = torch.full(shape, float("nan"), dtype=dtype)
    ref = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.float32, max_ctx=max_ctx)
    return cfg, Prefill(cfg, weights, k, v, dtype=dtype), ref, seed


def _ref_kv(ref, n):
    # (L, ctx, kvh, d) -> (L, kvh, n, d)
    return ref.k_cache[:, :n].transpose(1, 2), ref.v_cache[:, :n].transpose(1, 2)


@pytest.mark.parametrize("chunks", [[37], [20, 1, 16]])
def test_prefill_float32_matches_reference(tmp_path, chunks):
    cfg, pf, ref, seed = _setup(tmp_path, 64, torch.float32)
    g = torch.Generator().manual_seed(seed)
    n = sum(chunks)
    tokens = torch.randint(0, cfg.vocab_size, (n,), generator=g)
    ref(tokens, 0)
    start = 0
    for c in chunks:  # continuation chunks take the masked path
        pf(tokens[start:start + c], start)
        start += c
    rk, rv = _ref_kv(ref, n)
    torch.testing.assert_close(pf.k_cache[:, :, :n], rk, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pf.v_cache[:, :, :n], rv, rtol=1e-4, atol=1e-5)
    assert torch.isnan(pf.k_cache[:, :, n:]).all(), "positions past the prompt were written"


def test_prefill_bf16_close_to_reference(tmp_path):
    cfg, pf, ref, seed = _setup(tmp_path, 64, torch.bfloat16)
    tokens = torch.randint(0, cfg.vocab_size, (48,), generator=torch.Generator().manual_seed(seed))
    ref(tokens, 0)
    pf(tokens, 0)
    rk, rv = _ref_kv(ref, 48)
    for got, want in ((pf.k_cache[:, :, :48], rk), (pf.v_cache[:, :, :48], rv)):
        err = (got.double() - want.double()).norm() / want.double().norm()
        assert err < 2e-2, f"bf16 prefill relative error {err:.3e}"


def test_prefill_refuses_bad_input_and_writes_nothing(tmp_path):
    cfg, pf, ref, seed = _setup(tmp_path, 16, torch.float32)
    with pytest.raises(MegakernelError, match="does not fit max_ctx=16"):
        pf(list(range(10)), 8)
    with pytest.raises(MegakernelError, match=r"outside \[0, 512\)"):
        pf([1, 2, 512], 0)
    with pytest.raises(MegakernelError, match=r"outside \[0, 512\)"):
        pf([-1], 0)
    assert torch.isnan(pf.k_cache).all() and torch.isnan(pf.v_cache).all()
