"""The greedy LM head from the int8 copy (src/lm_head_q8.cuh) against the bf16 LM head, on the GPU.

The int8 path must choose exactly the bf16 path's token: same rows, same logits bit for bit, same
tie rule. Checked on random checkpoints of the real shapes (teacher-forced launches, so every step
is a fresh hidden state), on fixed random hidden states (mk_set_lm_only), and on an LM head whose
rows differ by less than the int8 step, where every row is a candidate and, on a small grid, the
warps' candidate lists overflow and the block falls back to its bf16 rows. Marked `gpu`.
"""
import ctypes
import os

import numpy as np
import pytest
import torch

from megakernel.fixtures import write_random_checkpoint, write_random_flat
from megakernel.weight_loader import convert

pytestmark = pytest.mark.gpu


def _both_ways(engine, fn):
    """fn() with the int8 LM head, then with the bf16 one (the engine is left on int8)."""
    engine.set_lm_int8(True)
    a = fn()
    engine.set_lm_int8(False)
    try:
        b = fn()
    finally:
        engine.set_lm_int8(True)
    return a, b


def _lm_only_tokens(engine, hiddens):
    lib, h = engine.lib, engine._handle()
    out = []
    try:
        for x in hiddens:
            assert lib.mk_set_lm_only(h, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) == 0
            out.append(engine.run([], 0, 1, start_token=0)[0])
    finally:
        lib.mk_set_lm_only(h, None)
    return out


@pytest.mark.parametrize("embed_std", [0.02, 1.0])
def test_int8_greedy_equals_bf16_on_random_weights(tmp_path, embed_std):
    from megakernel.engine import Engine
    seed = int.from_bytes(os.urandom(2), "little")
    flat = write_random_flat(str(tmp_path), seed=seed, embed_std=embed_std)
    rng = np.random.default_rng(seed)
    forced = [int(t) for t in rng.integers(0, 151936, 96)]
    with Engine(flat, max_ctx=256, quiet=True) as eng:
        assert eng.has_lm_int8
        a, b = _both_ways(eng, lambda: eng.run(forced, 0, len(forced)))
        assert a == b, f"seed {seed}: first difference at step {next(i for i in range(len(a)) if a[i] != b[i])}"
        g8, g16 = _both_ways(eng, lambda: eng.generate(forced[:5], 48))
        assert g8 == g16
        hiddens = [rng.standard_normal(1024).astype(np.float32) * s for s in (0.1, 1.0, 30.0)]
        t8, t16 = _both_ways(eng, lambda: _lm_only_tokens(eng, hiddens))
        assert t8 == t16


def _near_tied_flat(folder, seed):
    """A checkpoint whose lm_head rows are one random row plus perturbations of a bf16 ulp in a few
    elements (many far below the int8 step), with exact duplicates among them."""
    from safetensors.torch import load_file, save_file
    ck = write_random_checkpoint(os.path.join(folder, "ck"), seed=seed, lm_head=True)
    path = os.path.join(ck, "model.safetensors")
    sd = load_file(path)
    head = sd["lm_head.weight"]
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(head.shape[1], generator=g) * 0.02
    rows = base.to(torch.bfloat16).repeat(head.shape[0], 1)
    bits = rows.view(torch.int16)
    n_pert = head.shape[0] * 3
    r = torch.randint(0, head.shape[0], (n_pert,), generator=g)
    c = torch.randint(0, head.shape[1], (n_pert,), generator=g)
    bits[r, c] += torch.randint(-1, 2, (n_pert,), generator=g).to(torch.int16)  # -1, 0 or +1 ulp
    sd["lm_head.weight"] = rows.contiguous()
    save_file(sd, path, metadata={"format": "pt"})
    return convert(ck, os.path.join(folder, "w.bin"))


@pytest.mark.parametrize("grid", [0, 8])
def test_int8_greedy_equals_bf16_when_rows_are_near_ties(tmp_path, grid):
    from megakernel.engine import Engine
    seed = int.from_bytes(os.urandom(2), "little")
    flat = _near_tied_flat(str(tmp_path), seed)
    rng = np.random.default_rng(seed)
    hiddens = [rng.standard_normal(1024).astype(np.float32) for _ in range(4)]
    with Engine(flat, max_ctx=64, grid=grid, quiet=True) as eng:
        t8, t16 = _both_ways(eng, lambda: _lm_only_tokens(eng, hiddens))
        assert t8 == t16, f"seed {seed}, grid {eng.grid}"
        forced = [int(t) for t in rng.integers(0, 151936, 8)]
        a, b = _both_ways(eng, lambda: eng.run(forced, 0, len(forced)))
        assert a == b, f"seed {seed}, grid {eng.grid}"


def test_engine_without_int8_copy_refuses_to_switch_it_on(tmp_path, monkeypatch):
    from megakernel.engine import Engine
    from megakernel import MegakernelError
    flat = write_random_flat(str(tmp_path), seed=1)
    monkeypatch.setenv("MK_LM_Q8", "0")
    with Engine(flat, max_ctx=32, quiet=True) as eng:
        assert not eng.has_lm_int8
        with pytest.raises(MegakernelError, match="MK_LM_Q8=0"):
            eng.set_lm_int8(True)
        eng.set_lm_int8(False)
        assert len(eng.run([1, 2, 3], 0, 3)) == 3
