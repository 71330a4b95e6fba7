"""The megakernel against host/reference.py: teacher-forced, step by step, on the same weights.

    python -m megakernel.validate [--seeds 0 1 2] [--steps 128] [--json results/validate.json]
    python -m megakernel.validate --weights W.bin          # a real converted checkpoint
    python -m megakernel.validate --contexts 0 8192 32768  # also after bulk prefills of 8K, 32K

For each seed: a random checkpoint of the real Qwen3-0.6B shapes (fixtures.py, real HF
layout, converted by weight_loader.py), random input tokens, then per step: one kernel launch
in validation mode (logits and per-layer hidden states), against the float32 reference's
logits at that position. Reported per step: relative L2 error of the logits, and greedy
agreement wherever the reference's top-2 gap exceeds twice the step's largest absolute logit
difference (where rounding cannot flip the argmax). Also: one multi-step launch reproduces the
step-by-step tokens bit for bit, and two identical generations agree.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from .engine import Engine
from .fsutil import write_text_atomic
from .fixtures import write_random_flat
from .reference import Qwen3Reference
from .weight_loader import FlatFile

# Random weights are scaled so that the model is confident (large top-2 logit gaps), which makes
# the greedy-agreement check bite on most steps; see RESEARCH.md.
VALIDATION_EMBED_STD = 1.0
VALIDATION_WEIGHT_STD = 0.02
REL_ERR_LIMIT = 1e-2


def git_commit() -> str:
    if os.environ.get("MK_COMMIT"):
        return os.environ["MK_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def validate_flat(flat_path: str, steps: int, seed: int, verbose: bool = True, lib_path: str | None = None) -> dict:
    with FlatFile(flat_path) as flat:
        cfg, sd = flat.config, flat.to_hf_state_dict()
    ref = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.float32, max_ctx=steps + 1, device="cuda")
    del sd
    g = torch.Generator().manual_seed(1000 + seed)
    tokens = torch.randint(0, cfg.vocab_size, (steps,), generator=g)
    hidden_ref = []
    ref_logits = ref(tokens.cuda(), 0, hidden_out=hidden_ref).cpu().numpy().astype(np.float64)  # (steps, V)
    hidden_ref = torch.stack(hidden_ref, 1).cpu().numpy()                                # (steps, 2L, H)
    del ref
    torch.cuda.empty_cache()

    with Engine(flat_path, max_ctx=steps + 48, verify=False, quiet=True, lib_path=lib_path) as eng:
        rows = []
        for s in range(steps):
            tok = eng.run([int(tokens[s])], s, 1, debug=True)[0]
            hidden, logits = eng.debug_state()
            rows.append(_compare_step(cfg, s, tok, logits, ref_logits[s], hidden, hidden_ref[s]))
        # the same steps in one launch (the fast path) must give the same tokens, bit for bit
        one_launch = eng.run([int(t) for t in tokens], 0, steps)
        # determinism: the same greedy generation twice
        prompt = [int(t) for t in tokens[:8]]
        gen_a = eng.generate(prompt, 32)
        gen_b = eng.generate(prompt, 32)
    return _summarize(rows, seed, 0, one_launch, gen_a == gen_b, verbose)


def _compare_step(cfg, step, tok, logits, ref_s, hidden=None, hidden_ref=None) -> dict:
    diff = np.abs(logits - ref_s)
    top2 = np.sort(ref_s)[-2:]
    gap, max_diff = float(top2[1] - top2[0]), float(diff.max())
    checked = gap > 2 * max_diff
    ref_tok = int(ref_s.argmax())
    row = dict(step=step, rel_err=rel_l2(logits, ref_s), max_abs_diff=max_diff, top2_gap=gap,
               checked=bool(checked), mismatch=bool(checked and tok != ref_tok), kernel_token=int(tok),
               ref_token=ref_tok, self_consistent=int(tok) == int(logits.argmax()), worst_hidden=None)
    if hidden is not None:
        h_err = [rel_l2(hidden.reshape(-1, cfg.hidden_size)[k], hidden_ref[k]) for k in range(2 * cfg.num_hidden_layers)]
        worst = int(np.argmax(h_err))
        row["worst_hidden"] = (worst // 2, "attn" if worst % 2 == 0 else "mlp", h_err[worst])
    return row


def validate_after_prefill(flat_path: str, context: int, steps: int, seed: int, verbose: bool = True,
                           chunk: int = 1024, lib_path: str | None = None) -> dict:
    """Bulk prefill (host/prefill.py) of `context` random tokens, then `steps` teacher-forced
    megakernel steps from there, each against the float32 reference (prefilled in chunks)."""
    with FlatFile(flat_path) as flat:
        cfg, sd = flat.config, flat.to_hf_state_dict()
    n = context + steps
    ref = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.float32, max_ctx=n, device="cuda")
    del sd
    tokens = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(2000 + seed))
    for c0 in range(0, context, chunk):
        ref(tokens[c0:min(c0 + chunk, context)].cuda(), c0)
    ref_logits = ref(tokens[context:].cuda(), context).cpu().numpy().astype(np.float64)  # (steps, V)
    del ref
    torch.cuda.empty_cache()
    toks = [int(t) for t in tokens]
    with Engine(flat_path, max_ctx=n + 40, verify=False, quiet=True, lib_path=lib_path) as eng:
        eng.prefiller(toks[:context], 0)
        rows = []
        for s in range(steps):
            tok = eng.run([toks[context + s]], context + s, 1, debug=True)[0]
            _, logits = eng.debug_state()
            rows.append(_compare_step(cfg, s, tok, logits, ref_logits[s]))
        one_launch = eng.run(toks[context:], context, steps)  # positions < context stay as prefilled
        gen_a = eng.generate(toks[:context + 1], 32)
        gen_b = eng.generate(toks[:context + 1], 32)
    return _summarize(rows, seed, context, one_launch, gen_a == gen_b, verbose)


def _summarize(rows: list, seed: int, context: int, one_launch: list, deterministic: bool, verbose: bool) -> dict:
    """One seed's figures from its per-step rows (_compare_step); prints the worst steps if verbose."""
    hidden = [r["worst_hidden"] for r in rows if r["worst_hidden"] is not None]
    res = dict(seed=seed, context=context, steps=len(rows), max_rel_err=max(r["rel_err"] for r in rows),
               steps_checked=sum(r["checked"] for r in rows), token_mismatches=sum(r["mismatch"] for r in rows),
               self_consistent=all(r["self_consistent"] for r in rows),
               one_launch_matches=one_launch == [r["kernel_token"] for r in rows],
               deterministic=deterministic, worst_hidden=max(hidden, key=lambda w: w[2]) if hidden else None)
    if verbose:
        for r in [r for r in rows if r["rel_err"] > REL_ERR_LIMIT or r["mismatch"]][:5]:
            print(f"  seed {seed} context {context} step {r['step']}: rel_err {r['rel_err']:.2e} kernel "
                  f"{r['kernel_token']} ref {r['ref_token']} worst hidden layer {r['worst_hidden']}", file=sys.stderr)
    return res


def passed(results: list) -> bool:
    return all(r["max_rel_err"] <= REL_ERR_LIMIT and r["token_mismatches"] == 0 and r["self_consistent"]
               and r["one_launch_matches"] and r["deterministic"] and r["steps_checked"] >= 0.9 * r["steps"]
               for r in results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--weights", help="a converted flat file to validate instead of random checkpoints")
    ap.add_argument("--json", help="write the figures to this path")
    ap.add_argument("--embed-std", type=float, default=VALIDATION_EMBED_STD)
    ap.add_argument("--contexts", type=int, nargs="+", default=[0],
                    help="0: teacher-forced from position 0 through the kernel alone; N > 0: bulk prefill "
                         "of N tokens, then the steps from there (e.g. --contexts 0 8192 32768)")
    ap.add_argument("--long-steps", type=int, default=32, help="steps after a prefill of N > 0 tokens")
    ap.add_argument("--gencode", help="validate a library built with this -gencode value instead of the native "
                                      "one, e.g. arch=compute_80,code=compute_80 (PTX only, JIT-compiled at load)")
    args = ap.parse_args(argv)
    lib_path = None
    if args.gencode:
        from .launcher import build_library
        lib_path = build_library(gencode=args.gencode, quiet=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in ([0] if args.weights else args.seeds):
            if args.weights:
                flat = args.weights
            else:
                flat = write_random_flat(os.path.join(tmp, f"seed{seed}"), seed=seed, embed_std=args.embed_std,
                                         weight_std=VALIDATION_WEIGHT_STD)
            for context in args.contexts:
                r = (validate_flat(flat, args.steps, seed, lib_path=lib_path) if context == 0
                     else validate_after_prefill(flat, context, args.long_steps, seed, lib_path=lib_path))
                results.append(r)
                print(f"seed {seed} context {context}: max rel err {r['max_rel_err']:.2e}, checked "
                      f"{r['steps_checked']}/{r['steps']}, mismatches {r['token_mismatches']}, one-launch match "
                      f"{r['one_launch_matches']}, deterministic {r['deterministic']}, worst hidden {r['worst_hidden']}")
            if not args.weights:
                os.unlink(flat)
    ok = passed(results)
    report = dict(device=torch.cuda.get_device_name(0), date=datetime.date.today().isoformat(), commit=git_commit(),
                  build=args.gencode or "native", seeds=sorted({r["seed"] for r in results}), contexts=args.contexts,
                  steps=args.steps,
                  max_rel_err=max(r["max_rel_err"] for r in results),
                  steps_checked=sum(r["steps_checked"] for r in results),
                  steps_total=sum(r["steps"] for r in results),
                  token_mismatches=sum(r["token_mismatches"] for r in results),
                  passed=ok, per_seed=results)
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2))
    print("VALIDATION", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
