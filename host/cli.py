"""The `megakernel` command: thin front ends over host/.

    megakernel convert MODEL OUT.bin          HF snapshot folder or hub id -> flat weight file
    megakernel generate --model MODEL --prompt-ids 1 2 3 [--max-new-tokens N]
    megakernel validate [--seeds 0 1 2] [--steps 128] [--json PATH]
    megakernel bench [--contexts ...] [--json PATH] [--plot PATH]

--random-weights (generate) runs on a random checkpoint of the real Qwen3-0.6B shapes, for
machines that cannot download; the output is then meaningless tokens, and says so.
Text prompts, sampling and chat come with the tokenizer (a later issue); generate takes ids.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

from . import MegakernelError


def _generate(args) -> int:
    from .engine import Engine
    if not args.model and not args.random_weights:
        raise MegakernelError("give --model (a snapshot folder, a hub id or a .bin) or --random-weights")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.random_weights:
            from .fixtures import write_random_flat
            print("[megakernel] --random-weights: random checkpoint of the Qwen3-0.6B shapes; "
                  "the tokens below are meaningless", file=sys.stderr)
            model = write_random_flat(tmp)
        with Engine.from_pretrained(model, max_ctx=args.max_ctx, progress=not args.quiet) as eng:
            t0 = time.perf_counter()
            out = eng.generate(args.prompt_ids, args.max_new_tokens, eos_ids=args.eos)
            wall = time.perf_counter() - t0
            steps, ms = len(args.prompt_ids) + len(out) - 1, eng.last_ms()
    print(" ".join(map(str, out)))
    print(f"[{len(out)} tokens, {ms:.2f} ms in the kernel ({steps} steps, {steps / ms * 1e3:.0f} steps/s), "
          f"{wall * 1e3:.1f} ms wall]", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megakernel", description="Qwen3 decode in one persistent CUDA kernel")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="HF checkpoint -> flat weight file")
    c.add_argument("model")
    c.add_argument("out")
    c.add_argument("--quiet", action="store_true")
    g = sub.add_parser("generate", help="greedy continuation of token ids")
    g.add_argument("--model")
    g.add_argument("--prompt-ids", type=int, nargs="+", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--max-ctx", type=int, default=4096)
    g.add_argument("--eos", type=int, nargs="*", default=[])
    g.add_argument("--random-weights", action="store_true")
    g.add_argument("--quiet", action="store_true")
    sub.add_parser("validate", help="kernel vs reference (see python -m megakernel.validate -h)", add_help=False)
    sub.add_parser("bench", help="tok/s vs roofline and PyTorch (python -m megakernel.benchmark -h)", add_help=False)
    args, rest = ap.parse_known_args(argv)
    try:
        if args.cmd == "validate":
            from .validate import main as validate_main
            return validate_main(rest)
        if args.cmd == "bench":
            from .benchmark import main as bench_main
            return bench_main(rest)
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.cmd == "convert":
            from .weight_loader import convert
            print(convert(args.model, args.out, progress=not args.quiet))
            return 0
        return _generate(args)
    except MegakernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
