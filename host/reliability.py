"""Reliability runs on the GPU: determinism, a long soak, and the compute-sanitizer driver.

    python -m megakernel.reliability determinism [--json results/determinism.json]
    python -m megakernel.reliability soak [--generations 500 --tokens 200000] [--json results/soak.json]
    python -m megakernel.reliability decode --steps 8     (what scripts/sanitize.sh runs under each tool)

All three use a random checkpoint of the real Qwen3-0.6B shapes (fixtures.py), or --weights.
determinism: 100 generations of one prompt (greedy, and sampled with one seed) must give the
same tokens bit for bit, and so must engines with other grid sizes. soak: many generations of
random prompt and output lengths on one engine, with GPU memory watched, then every one of them
again on a fresh engine: the tokens must be the same. Both write a JSON report; a failure
exits non-zero with what differed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import tempfile
import time

from .engine import Engine
from .fixtures import write_random_flat
from .fsutil import write_text_atomic
from .validate import VALIDATION_EMBED_STD, git_commit


def _free_bytes() -> int:
    import torch
    return int(torch.cuda.mem_get_info()[0])


def _device() -> str:
    import torch
    return torch.cuda.get_device_name()


def determinism(flat: str, repeats: int = 100, new_tokens: int = 64, seed: int = 0) -> dict:
    """Repeated generations of one prompt, and other grid sizes: identical tokens or a report."""
    rng = random.Random(seed)
    with Engine(flat, max_ctx=512, quiet=True) as eng:
        prompt = [rng.randrange(eng.config.vocab_size) for _ in range(32)]
        greedy = [eng.generate(prompt, new_tokens) for _ in range(repeats)]
        sampled = [eng.generate(prompt, new_tokens, temperature=0.8, top_p=0.95, seed=1234) for _ in range(repeats)]
        sms = eng.sms
    grids = {}
    for grid in sorted({sms, sms // 2, sms // 4, 8}, reverse=True):
        with Engine(flat, max_ctx=512, quiet=True, grid=grid) as eng:
            grids[grid] = eng.generate(prompt, new_tokens)
    r = {
        "repeats": repeats, "new_tokens": new_tokens,
        "greedy_identical": all(g == greedy[0] for g in greedy),
        "sampled_identical": all(s == sampled[0] for s in sampled),
        "grids": sorted(grids),
        "grids_identical": all(g == greedy[0] for g in grids.values()),
    }
    r["passed"] = r["greedy_identical"] and r["sampled_identical"] and r["grids_identical"]
    return r


def soak(flat: str, generations: int = 500, tokens: int = 200_000, max_ctx: int = 2048, seed: int = 0,
         verbose: bool = True) -> dict:
    """`generations` generations of random lengths (about `tokens` new tokens in all) on one
    engine, GPU memory watched; then each again on a fresh engine, tokens compared."""
    from .weight_loader import FlatFile
    with FlatFile(flat, verify=False) as f:
        vocab = f.config.vocab_size
    rng = random.Random(seed)
    mean_new = max(1, tokens // generations)
    jobs = []
    for i in range(generations):
        n_prompt = rng.randint(1, 256)
        n_new = min(rng.randint(1, 2 * mean_new - 1), max_ctx - n_prompt)
        sampled = i % 4 == 3  # every fourth one sampled, with its own seed (reproducible)
        jobs.append(dict(prompt=[rng.randrange(vocab) for _ in range(n_prompt)], n=n_new,
                         kw=dict(temperature=0.8, top_p=0.95, seed=i) if sampled else {}))
    short = tokens - sum(j["n"] for j in jobs)  # top up to at least `tokens` new tokens
    for j in jobs * 8:
        if short <= 0:
            break
        add = min(short, max_ctx - len(j["prompt"]) - j["n"], 64)
        j["n"], short = j["n"] + add, short - add
    outputs, errors, free = [], [], []
    with Engine(flat, max_ctx=max_ctx, quiet=True) as eng:
        # Warm-up: the bulk prefill captures a CUDA graph per prompt-length bucket on its second
        # use, and PyTorch's allocator keeps what they need; memory is watched from here on.
        free_start = _free_bytes()
        for n_prompt in (2, 17, 33, 65, 129, 257):
            for _ in range(2):
                eng.generate(list(range(1, n_prompt + 1)), 2)
        free.append(_free_bytes())
        t0 = time.perf_counter()
        for i, job in enumerate(jobs):
            try:
                outputs.append(eng.generate(job["prompt"], job["n"], **job["kw"]))
            except Exception as e:  # recorded, and the soak goes on: every error counts against it
                errors.append(f"generation {i}: {e}")
                outputs.append(None)
            if (i + 1) % 50 == 0:
                free.append(_free_bytes())
                if verbose:
                    print(f"  soak {i + 1}/{generations}: {sum(len(o) for o in outputs if o):,} tokens, "
                          f"{time.perf_counter() - t0:.0f} s, free GPU memory {free[-1] / 1e9:.3f} GB", flush=True)
    soak_s = time.perf_counter() - t0
    mismatched = []
    with Engine(flat, max_ctx=max_ctx, quiet=True) as fresh:
        for i, job in enumerate(jobs):
            if outputs[i] is not None and fresh.generate(job["prompt"], job["n"], **job["kw"]) != outputs[i]:
                mismatched.append(i)
    r = {
        "generations": generations, "new_tokens": sum(len(o) for o in outputs if o), "soak_seconds": round(soak_s, 1),
        "errors": errors, "fresh_engine_mismatches": mismatched,
        "free_bytes_samples": free, "memory_growth_bytes": max(0, free[0] - min(free)),
        "warm_up_bytes": free_start - free[0],
    }
    r["passed"] = not errors and not mismatched and r["memory_growth_bytes"] == 0 and r["new_tokens"] >= tokens
    return r


def decode(flat: str, steps: int = 8, one_step_launches: bool = False, position: int = 0) -> list:
    """`steps` greedy decode steps through the kernel only (no PyTorch kernels): what the
    sanitizers watch. From a one-token prompt, or (position > 0) from that position over the
    cache as the engine allocated it (zeros), so the attention scans `position` cached positions
    (split-KV chunks, staged batches) with no prefill kernels. one_step_launches: a launch per
    step, so that a slow tool can check some of them per run (--launch-skip / --launch-count)."""
    forced = [] if position else [11]  # position 0: the prompt token 11 goes in first
    with Engine(flat, max_ctx=max(64, position + steps + 8), quiet=True) as eng:
        if not one_step_launches:
            return eng.run(forced, position, steps, start_token=11)
        out = eng.run(forced, position, 1, start_token=11)
        for pos in range(position + 1, position + steps):
            out += eng.run([], pos, 1, start_token=out[-1])
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megakernel.reliability", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["determinism", "soak", "decode"])
    ap.add_argument("--weights", help="a converted flat file (default: a random checkpoint of the real shapes)")
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=200_000, help="soak: new tokens in all, about")
    ap.add_argument("--repeats", type=int, default=100, help="determinism: generations of the same prompt")
    ap.add_argument("--steps", type=int, default=8, help="decode: new tokens")
    ap.add_argument("--one-step-launches", action="store_true", help="decode: one launch per step")
    ap.add_argument("--position", type=int, default=0, help="decode: first position (over a zeroed cache)")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(2), "little"))
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        flat = a.weights or write_random_flat(tmp, seed=a.seed, embed_std=VALIDATION_EMBED_STD)
        if a.what == "decode":
            print("decode:", decode(flat, a.steps, a.one_step_launches, a.position))
            return 0
        r = determinism(flat, a.repeats, seed=a.seed) if a.what == "determinism" else \
            soak(flat, a.generations, a.tokens, seed=a.seed)
    r.update(what=a.what, device=_device(), date=datetime.date.today().isoformat(), commit=git_commit(), seed=a.seed)
    print(json.dumps({k: v for k, v in r.items() if k != "free_bytes_samples"}, indent=1))
    if a.json:
        write_text_atomic(a.json, json.dumps(r, indent=1) + "\n")
    print(f"{a.what.upper()}: {'PASSED' if r['passed'] else 'FAILED'}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
