"""Batch-1 decode speed of the megakernel against the memory-bandwidth roofline and PyTorch baselines.

    python -m megakernel.benchmark [--weights W.bin] [--contexts 1 128 1024 4096 8192 32768]
                                   [--tokens 512] [--ttft 16 1024 8192] [--json PATH] [--plot PATH]
                                   [--no-baselines] [--quick]

Runs on whatever CUDA GPU it finds, all in one process on the same weights (a converted flat
file with --weights, else a random checkpoint of the real Qwen3-0.6B shapes):
  1. streaming read bandwidth of the GPU (the roofline), next to the datasheet figure;
  2. the megakernel at each context: bulk prefill of the context (host/prefill.py), a 16-step
     warm-up, then one launch of --tokens steps, timed with CUDA events (median of 3); greedy
     launches choose the token from the LM head's int8 copy (the same tokens, src/lm_head_q8.cuh),
     and the same launches are timed again with the bf16 LM head;
  3. time to first token for prompts of --ttft lengths: bulk prefill + the first decode step,
     wall clock, median of 5 after a warm-up (and, up to 1,024 tokens, the same prompt fed
     through the megakernel one token per step, for comparison);
  4. PyTorch baselines at the smallest context: eager, CUDA graph, torch.compile
     (reduce-overhead) and HF transformers generate (where installed).
--quick: contexts 1 and 128, 256 tokens, TTFT at 16 and 1,024, only two baselines.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import tempfile

import torch

from . import MegakernelError
from .fsutil import atomic_output, write_text_atomic

# Datasheet memory bandwidth (GB/s), matched in order against torch.cuda.get_device_name().
DATASHEET_GBPS = [
    (r"H200", 4800), (r"H100 PCIe", 2000), (r"H100", 3350),
    (r"A100.*80GB", 2039), (r"A100", 1555), (r"\bT4\b", 320), (r"\bL4\b", 300),
    (r"RTX 4090", 1008), (r"RTX 3090", 936), (r"RTX 5090", 1792),
]
BASELINE_STEPS = 64
HF_PROMPT, HF_NEW = 8, 32


def datasheet_bw(name: str):
    for pattern, gbps in DATASHEET_GBPS:
        if re.search(pattern, name, re.IGNORECASE):
            return gbps
    return "unknown"


def timed(fn, n: int) -> float:
    """Tokens per second of n calls of fn, timed with CUDA events around the whole loop."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return n / (start.elapsed_time(end) / 1000)


# ------------------------------------------------------------------------------ megakernel

def measure_megakernel(eng, context: int, tokens: int, read_bw: float, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed + context)
    vocab = eng.config.vocab_size
    pos0 = context if context > 1 else 0
    if pos0:  # bulk prefill of `context` random tokens
        eng.prefiller(torch.randint(0, vocab, (context,), generator=gen).tolist(), 0)
    start_token = int(torch.randint(0, vocab, (1,), generator=gen))
    eng.run([], pos0, 16, start_token)  # warm-up

    def sec_per_token():  # each timed launch starts again at pos0 and overwrites the cache after it
        ms = []
        for _ in range(3):
            done = len(eng.run([], pos0, tokens, start_token))
            if done != tokens:
                raise MegakernelError(f"launch stopped after {done} of {tokens} steps (EOS?)")
            ms.append(eng.last_ms())
        return statistics.median(ms) / 1000 / tokens

    sec_per_tok = sec_bf16 = sec_per_token()
    # the same launches with the bf16 LM head (the int8 copy chooses the same tokens, reading 0.153 GB
    # less a token: src/lm_head_q8.cuh); both are reported against the bf16 roofline
    if eng.has_lm_int8:
        eng.set_lm_int8(False)
        try:
            sec_bf16 = sec_per_token()
        finally:
            eng.set_lm_int8(True)
    bpt = eng.bytes_per_token(context + tokens // 2)  # the average context over the launch
    roof = read_bw * 1e9 / bpt
    return dict(context=context, tok_s=1 / sec_per_tok, ms_per_token=sec_per_tok * 1000,
                achieved_GBps=bpt / sec_per_tok / 1e9, roofline_tok_s=roof,
                pct_roofline=100 / sec_per_tok / roof, tok_s_bf16_lm_head=1 / sec_bf16,
                pct_roofline_bf16_lm_head=100 / sec_bf16 / roof)


def measure_ttft(eng, lengths, seed: int = 0) -> list:
    """Time to first token (ms) from a fresh cache, per prompt length: median of 5 after a warm-up."""
    out = []
    for n in lengths:
        if n + 1 > eng.max_ctx:
            continue
        prompt = torch.randint(0, eng.config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed + n)).tolist()
        for _ in range(2):  # warm-up: the second use of a length bucket captures its prefill graph
            eng.time_to_first_token(prompt)
        ms = statistics.median(eng.time_to_first_token(prompt)[1] for _ in range(5))
        row = dict(prompt_tokens=n, ms=ms)
        if n <= 1024:  # the same prompt through the megakernel alone, one token per step
            eng.run(prompt, 0, n)
            row["ms_kernel_only"] = eng.last_ms()
        out.append(row)
    return out


# ------------------------------------------------------------------------------- baselines

def _eager(ref, pos: int):
    tok = torch.zeros(1, dtype=torch.long, device="cuda")
    for p in range(pos, pos + 3):  # warm-up (also fills the cache up to the start position)
        tok = ref(tok, p).argmax(-1)
    state = {"tok": tok, "pos": pos}

    def step():
        state["tok"] = ref(state["tok"], state["pos"]).argmax(-1)
        state["pos"] += 1
    return timed(step, BASELINE_STEPS)


def _cuda_graph(ref, pos: int):
    # Qwen3Reference.forward takes start_pos as a Python int and slices the cache with it, so
    # the position is baked into a captured graph. Capturing one graph per position would cost
    # far more than it measures; instead one step at a fixed short position is captured and
    # replayed N times. A replay does exactly the work of a real decode step at that context.
    tok = torch.zeros(1, dtype=torch.long, device="cuda")

    def step():
        tok.copy_(ref(tok, pos).argmax(-1))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    return timed(graph.replay, BASELINE_STEPS)


def _compiled(ref, pos: int):
    # Same fixed position as the CUDA graph above (the int position specializes the compile).
    fwd = torch.compile(ref.forward, mode="reduce-overhead")
    tok = torch.zeros(1, dtype=torch.long, device="cuda")

    def step():
        tok.copy_(fwd(tok, pos).argmax(-1))
    try:
        for _ in range(3):  # warm-up: compile, then record the CUDA graphs
            step()
        return timed(step, BASELINE_STEPS)
    finally:
        torch._dynamo.reset()


def _hf_generate(cfg, sd):
    import transformers
    hf = {k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"}
    with torch.device("cuda"):
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**hf)).to(torch.bfloat16)
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (1, HF_PROMPT), device="cuda")
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = model.generate(ids, max_new_tokens=HF_NEW, min_new_tokens=HF_NEW, **kw)
        end.record()
        end.synchronize()
    return (out.shape[1] - HF_PROMPT) / (start.elapsed_time(end) / 1000)


def measure_baselines(flat_path: str, quick: bool, pos: int = 1) -> dict:
    """name -> tok/s (None where a baseline failed; the reason is printed)."""
    from .reference import Qwen3Reference
    from .weight_loader import FlatFile
    with FlatFile(flat_path, verify=False) as f:
        cfg, sd = f.config, f.to_hf_state_dict()
    runs = [("pytorch eager", _eager), ("pytorch cuda graph", _cuda_graph)]
    if not quick:
        runs.append(("torch.compile reduce-overhead", _compiled))
    results = {}
    for name, fn in runs:
        ref = None
        try:
            ref = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.bfloat16,
                                                 max_ctx=pos + BASELINE_STEPS + 8, device="cuda")
            results[name] = fn(ref, pos)
        except Exception as e:  # a baseline that cannot run is reported, not fatal
            results[name] = None
            print(f"  {name}: skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        del ref
        torch.cuda.empty_cache()
    if not quick:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("  hf transformers generate: skipped (transformers is not installed)")
        else:
            try:
                results["hf transformers generate"] = _hf_generate(cfg, sd)
            except Exception as e:
                results["hf transformers generate"] = None
                print(f"  hf transformers generate: skipped ({type(e).__name__}: {e})")
            torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------- output

def write_json(path: str, report: dict):
    write_text_atomic(path, json.dumps(report, indent=2))


def plot(path: str, report: dict, curve: list):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([c for c, _ in curve], [t for _, t in curve], "k-", label="roofline (measured read bandwidth)")
    ax.plot([r["context"] for r in runs], [r["tok_s"] for r in runs], "o-", label="megakernel")
    for i, (name, tok_s) in enumerate(runs[0]["baselines"].items()):
        if tok_s:
            ax.axhline(tok_s, linestyle="--", color=f"C{i + 1}", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode tokens / s (batch 1)")
    ax.set_title(f"{report['device']}  ({report['commit']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def print_report(report: dict):
    print(f"\n{'context':>8} | {'tok/s':>9} | {'ms/token':>8} | {'GB/s':>7} | {'% roofline':>10} | "
          f"{'bf16 LM head tok/s':>18} | {'%':>6}")
    for r in report["runs"]:
        print(f"{r['context']:>8} | {r['tok_s']:>9.1f} | {r['ms_per_token']:>8.3f} | "
              f"{r['achieved_GBps']:>7.0f} | {r['pct_roofline']:>9.1f}% | {r['tok_s_bf16_lm_head']:>18.1f} | "
              f"{r['pct_roofline_bf16_lm_head']:>5.1f}%")
    print("(tok/s: greedy with the LM head's int8 copy, the same tokens as the bf16 LM head; GB/s and % of "
          "roofline count the bf16 bytes)")
    first = report["runs"][0]
    for name, tok_s in first["baselines"].items():
        if tok_s:
            print(f"{name:>30}: {tok_s:9.1f} tok/s   megakernel speedup x{first['tok_s'] / tok_s:.2f}")
        else:
            print(f"{name:>30}: n/a")
    for t in report.get("ttft", []):
        extra = f"   (one token per kernel step: {t['ms_kernel_only']:.1f} ms)" if "ms_kernel_only" in t else ""
        print(f"time to first token, {t['prompt_tokens']:>5}-token prompt: {t['ms']:8.2f} ms{extra}")
    print(f"megakernel @ ctx {first['context']}: {first['tok_s']:.1f} tok/s, "
          f"{first['pct_roofline']:.1f}% of roofline ({report['device']})")


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="a converted flat .bin (default: random Qwen3-0.6B-shaped weights)")
    ap.add_argument("--contexts", type=int, nargs="+", help="default 1 128 1024 4096 8192 32768")
    ap.add_argument("--ttft", type=int, nargs="*", help="prompt lengths for time to first token (default 16 1024 8192)")
    ap.add_argument("--tokens", type=int, help="decode steps per timed launch (default 512)")
    ap.add_argument("--json", help="write the figures to this path")
    ap.add_argument("--plot", help="write a PNG of tok/s against context to this path")
    ap.add_argument("--no-baselines", action="store_true", help="skip the PyTorch baselines")
    ap.add_argument("--quick", action="store_true", help="contexts 1 128, 256 tokens, two baselines")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except MegakernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    if not torch.cuda.is_available():
        raise MegakernelError("no NVIDIA GPU is visible to PyTorch; run on a machine with a CUDA GPU")
    contexts = sorted(set(args.contexts or ([1, 128] if args.quick else [1, 128, 1024, 4096, 8192, 32768])))
    tokens = args.tokens or (256 if args.quick else 512)
    ttft_lengths = args.ttft if args.ttft is not None else ([16, 1024] if args.quick else [16, 1024, 8192])
    if contexts[0] < 1 or tokens < 1 or any(n < 1 for n in ttft_lengths):
        raise MegakernelError("contexts, --tokens and --ttft lengths must be at least 1")
    from .engine import Engine
    from .validate import git_commit
    with tempfile.TemporaryDirectory() as tmp:
        flat = args.weights
        if not flat:
            from .fixtures import write_random_flat
            print("building a random checkpoint of the Qwen3-0.6B shapes ...")
            flat = write_random_flat(tmp)
        max_ctx = max([*contexts, *ttft_lengths]) + tokens + 64
        eng = Engine(flat, max_ctx=max_ctx, verify=False, quiet=True)
        try:
            eng.set_eos([])  # never stop a timed launch early
            device = torch.cuda.get_device_name()
            read_bw = eng.lib.mk_measure_read_bandwidth(4.0, 9)
            if read_bw <= 0:
                raise MegakernelError("the read-bandwidth pass (a 4 GB buffer) failed; free GPU memory and retry")
            sheet = datasheet_bw(device)
            print(f"{device}: measured read bandwidth {read_bw:.0f} GB/s (datasheet {sheet} GB/s)")
            runs = [measure_megakernel(eng, c, tokens, read_bw) for c in contexts]
            ttft = measure_ttft(eng, ttft_lengths)
            grid = sorted({max(1, round(10 ** (i / 20))) for i in range(0, 200)
                           if 10 ** (i / 20) <= max(contexts)} | {max(contexts)})
            curve = [(c, read_bw * 1e9 / eng.bytes_per_token(c)) for c in grid]
            bytes_ctx1 = eng.bytes_per_token(1)
            baselines = {}
            if not args.no_baselines:
                print(f"PyTorch baselines at context 1 ({BASELINE_STEPS} steps each) ...")
                baselines = measure_baselines(flat, args.quick)
        finally:
            eng.close()
    for r in runs:
        r["baselines"] = dict(baselines)
    report = dict(device=device, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  commit=git_commit(), read_bw_GBps=read_bw, datasheet_bw_GBps=sheet,
                  bytes_per_token_ctx1=bytes_ctx1, runs=runs, ttft=ttft)
    print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, report, curve)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
