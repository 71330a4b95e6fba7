"""The steps of megakernel_colab.ipynb, one function per cell, so the notebook holds no logic.

Every function prints what it did. `gpu_check()` returns False (with an explanation) where
there is no usable GPU; the notebook's later cells then print that they are skipped.
"""
from __future__ import annotations

import os
import time


def gpu_check() -> bool:
    """Name, compute capability, memory and measured read bandwidth; False (explained) without a GPU."""
    from . import MegakernelError
    from .launcher import detect_gpu
    try:
        g = detect_gpu()
    except MegakernelError as e:
        print(f"No usable GPU: {e}\n"
              "This notebook needs an NVIDIA GPU runtime (Colab: Runtime > Change runtime type > T4/A100/H100 GPU), "
              "then Runtime > Run all. The cells below will say they are skipped.")
        return False
    import torch
    x = torch.empty(int(2e9) // 4, dtype=torch.float32, device="cuda")
    x.sum()
    t = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.sum()
        b.record()
        b.synchronize()
        t.append(a.elapsed_time(b))
    del x
    torch.cuda.empty_cache()
    bw = 2e9 / (sorted(t)[2] / 1e3) / 1e9
    print(f"GPU: {g['name']}, compute capability {g['cc'][0]}.{g['cc'][1]}, {g['sms']} SMs, "
          f"{g['memory_bytes'] / 2**30:.1f} GiB; read bandwidth ~{bw:.0f} GB/s (torch sum over 2 GB)")
    return True


def skipped(ready: bool) -> bool:
    if not ready:
        print("skipped: no usable GPU (see the GPU cell above)")
    return not ready


def prepare_model(model_id: str, offline: bool, workdir: str) -> dict:
    """Download + convert `model_id`; on no network (or offline=True) a random checkpoint of the
    real shapes instead. Returns {'folder', 'flat', 'random'}."""
    from . import MegakernelError
    from .engine import flat_path_for
    from .weight_loader import resolve_snapshot
    if not offline:
        try:
            folder = resolve_snapshot(model_id)
            flat = flat_path_for(folder)
            print(f"{model_id}: snapshot {folder}\nflat weights: {flat} ({os.path.getsize(flat) / 1e9:.2f} GB)")
            return dict(folder=folder, flat=flat, random=False)
        except MegakernelError as e:
            print(f"The hub cannot be reached ({e}).")
    print("Continuing on a random checkpoint of the real Qwen3-0.6B shapes (text output will be gibberish).")
    from .fixtures import write_random_checkpoint
    from .weight_loader import convert
    folder = write_random_checkpoint(os.path.join(workdir, "random-qwen3-0.6b"))
    flat = convert(folder, os.path.join(workdir, "random-qwen3-0.6b.bin"), progress=True)
    return dict(folder=folder, flat=flat, random=True)


def build() -> str:
    from .launcher import build_library
    t = time.time()
    path = build_library()
    print(f"kernel library: {path} ({time.time() - t:.1f} s, cached after the first build)")
    return path


def validate(steps: int = 32, seed: int = 0) -> dict:
    """Kernel vs the float32 PyTorch reference on a random real-shape checkpoint (validate.py)."""
    import tempfile
    from .fixtures import write_random_flat
    from .validate import REL_ERR_LIMIT, VALIDATION_EMBED_STD, VALIDATION_WEIGHT_STD, passed, validate_flat
    with tempfile.TemporaryDirectory() as tmp:
        flat = write_random_flat(tmp, seed=seed, embed_std=VALIDATION_EMBED_STD, weight_std=VALIDATION_WEIGHT_STD)
        r = validate_flat(flat, steps, seed)
    print(f"{'steps':>6} | {'max rel err':>11} | {'limit':>6} | {'checked':>7} | {'token mismatches':>16} | "
          f"{'one launch = step by step':>25} | {'deterministic':>13}")
    print(f"{r['steps']:>6} | {r['max_rel_err']:>11.2e} | {REL_ERR_LIMIT:>6.0e} | {r['steps_checked']:>7} | "
          f"{r['token_mismatches']:>16} | {str(r['one_launch_matches']):>25} | {str(r['deterministic']):>13}")
    print("VALIDATION", "PASSED" if passed([r]) else "FAILED")
    return r


def benchmark(flat: str, workdir: str, quick: bool = True) -> dict:
    """benchmark.py on these weights: tok/s vs roofline, TTFT, PyTorch baselines; shows the plot."""
    import json
    from .benchmark import main
    js, png = os.path.join(workdir, "bench.json"), os.path.join(workdir, "bench.png")
    args = ["--weights", flat, "--json", js, "--plot", png, "--contexts", "1", "128", "1024", "4096",
            "--ttft", "16", "1024"] + (["--quick"] if quick else [])
    if main(args) != 0:
        raise RuntimeError("benchmark failed (see above)")
    try:
        from IPython.display import Image, display
        display(Image(filename=png))
    except ImportError:
        print(f"plot: {png}")
    with open(js) as f:
        return json.load(f)


def open_engine(model: dict, max_ctx: int):
    from .engine import Engine
    from .tokenizer import Tokenizer
    return Engine(model["flat"], max_ctx=max_ctx, quiet=True), Tokenizer.from_snapshot(model["folder"])


def _stream(eng, tok, ids, max_new_tokens, reset=True, **sampling):
    from .tokenizer import stream_generate
    r = stream_generate(eng, tok, ids, max_new_tokens, reset=reset, **sampling)
    print(f"\n[{r['new_tokens']} tokens, TTFT {r['ttft_ms']:.1f} ms, {r['tok_s']:.0f} tok/s]")


def generate_demo(eng, tok, prompt: str, max_new_tokens: int = 128, seed: int = 0):
    """One streamed answer with the snapshot's sampling defaults."""
    _stream(eng, tok, tok.encode(tok.chat_turn(prompt, enable_thinking=False)), max_new_tokens,
            seed=seed, **tok.sampling_defaults())


def chat_demo(eng, tok, turns: list, max_new_tokens: int = 96):
    """A short multi-turn chat; later turns reuse the KV cache of the earlier ones (greedy)."""
    for i, msg in enumerate(turns):
        text = tok.chat_turn(msg, enable_thinking=False, pending=eng.pending_token if i else None)
        print(f"> {msg}")
        _stream(eng, tok, tok.encode(text), max_new_tokens, reset=i == 0)
        print(f"[{eng.pos} positions in the KV cache]\n")
