"""The `megakernel` command: thin front ends over host/.

    megakernel generate --model Qwen/Qwen3-0.6B|PATH --prompt "..." [--max-new-tokens N]
                        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--no-stream] [--json]
    megakernel chat --model Qwen/Qwen3-0.6B|PATH        multi-turn; /reset, /exit
    megakernel convert MODEL OUT.bin                   HF snapshot folder or hub id -> flat file
    megakernel validate [...]                          python -m megakernel.validate -h
    megakernel bench [...]                             python -m megakernel.benchmark -h

Sampling defaults come from the snapshot's generation_config.json (Qwen3-0.6B: temperature
0.6, top_k 20, top_p 0.95); flags override them; --temperature 0 is greedy. --random-weights
runs on a random checkpoint of the real shapes (with a synthetic byte-level tokenizer), for
machines that cannot download: the text is then gibberish, and says so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from . import MegakernelError
from .tokenizer import stream_generate


def _check_sampling_flags(args):
    if args.temperature is not None and not args.temperature >= 0:
        raise MegakernelError(f"--temperature {args.temperature}: it must be >= 0 (0: greedy)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise MegakernelError(f"--top-p {args.top_p}: it must be in (0, 1] (1: off)")
    if args.top_k is not None and args.top_k < 0:
        raise MegakernelError(f"--top-k {args.top_k}: it must be >= 0 (0: off)")


def _sampling(args, tok) -> dict:
    s = tok.sampling_defaults() if tok else dict(temperature=0.0, top_k=0, top_p=1.0)
    for k in ("temperature", "top_k", "top_p"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    return dict(s, seed=args.seed)


def _open(args, tmp):
    """(engine, tokenizer or None) for --model / --random-weights; nothing loaded on bad flags."""
    from .engine import Engine
    from .launcher import detect_gpu
    from .tokenizer import Tokenizer
    from .weight_loader import resolve_snapshot
    if not args.model and not args.random_weights:
        raise MegakernelError("give --model (a hub id like Qwen/Qwen3-0.6B, a snapshot folder or a .bin) "
                              "or --random-weights")
    detect_gpu()  # no GPU / too old: a one-line refusal before any download or build
    if args.random_weights:
        from .fixtures import write_random_checkpoint
        from .weight_loader import convert
        print("[megakernel] --random-weights: a random checkpoint of the Qwen3-0.6B shapes and a synthetic "
              "tokenizer; the output is gibberish", file=sys.stderr)
        folder = write_random_checkpoint(os.path.join(tmp, "ck"))
        flat = convert(folder, os.path.join(tmp, "w.bin"), progress=not args.quiet)
    elif args.model.endswith(".bin"):
        folder, flat = getattr(args, "tokenizer", None), args.model
    else:
        from .engine import flat_path_for
        folder = resolve_snapshot(args.model, quiet=args.quiet)
        flat = flat_path_for(folder, progress=not args.quiet)
    tok = Tokenizer.from_snapshot(folder) if folder else None
    return Engine(flat, max_ctx=args.max_ctx, quiet=args.quiet), tok


def _prompt_ids(args, tok) -> list:
    if args.prompt_ids:
        return args.prompt_ids
    if args.prompt is None:
        raise MegakernelError("give --prompt TEXT (or --prompt-ids ...)")
    if tok is None:
        raise MegakernelError("a .bin has no tokenizer: add --tokenizer SNAPSHOT_FOLDER or use --prompt-ids")
    if args.raw:
        return tok.encode(args.prompt)
    return tok.encode(tok.chat_turn(args.prompt, enable_thinking=not args.no_think))


def _generate(args) -> int:
    _check_sampling_flags(args)
    with tempfile.TemporaryDirectory() as tmp:
        eng, tok = _open(args, tmp)
        with eng:
            ids = _prompt_ids(args, tok)
            sampling = _sampling(args, tok)
            sampling["seed"] = eng.set_sampling(**sampling)  # the seed used, reported in --json
            r = stream_generate(eng, tok, ids, args.max_new_tokens, echo=not (args.no_stream or args.json), **sampling)
    r["seed"] = sampling["seed"]
    if args.json:
        print(json.dumps(r))
        return 0
    if args.no_stream:
        print(r["text"] if tok else " ".join(map(str, r["tokens"])), end="")
    print(f"\n[{r['new_tokens']} tokens, TTFT {r['ttft_ms']:.1f} ms, {r['tok_s']:.1f} tok/s"
          f"{', stopped at EOS' if r['stopped_on_eos'] else ''}]", file=sys.stderr)
    return 0


def _chat(args) -> int:
    _check_sampling_flags(args)
    with tempfile.TemporaryDirectory() as tmp:
        eng, tok = _open(args, tmp)
        if tok is None:
            raise MegakernelError("chat needs a tokenizer: use a snapshot folder or hub id, not a .bin")
        with eng:
            sampling = _sampling(args, tok)
            fresh = True
            print("[megakernel chat] /reset starts over, /exit leaves", file=sys.stderr)
            while True:
                try:
                    line = input("\n> ")
                except (EOFError, KeyboardInterrupt):
                    print()
                    return 0
                if line.strip() == "/exit":
                    return 0
                if line.strip() == "/reset":
                    fresh = True
                    print("[conversation cleared]", file=sys.stderr)
                    continue
                if not line.strip():
                    continue
                turn = tok.chat_turn(line, enable_thinking=not args.no_think,
                                     pending=None if fresh else eng.pending_token)
                try:
                    r = stream_generate(eng, tok, tok.encode(turn), args.max_new_tokens, reset=fresh, **sampling)
                    print(f"\n[{r['new_tokens']} tokens, TTFT {r['ttft_ms']:.1f} ms, {r['tok_s']:.1f} tok/s, "
                          f"{eng.pos} positions cached]", file=sys.stderr)
                    fresh = False
                except KeyboardInterrupt:
                    print("\n[interrupted; the next turn starts a new conversation]", file=sys.stderr)
                    fresh = True
                except MegakernelError as e:
                    print(f"\nerror: {e} (/reset to start over)", file=sys.stderr)
                    fresh = True


def _add_model_args(p, chat=False):
    p.add_argument("--model", help="hub id (Qwen/Qwen3-0.6B), snapshot folder, or converted .bin")
    p.add_argument("--tokenizer", help="snapshot folder with tokenizer.json (with a .bin --model)")
    p.add_argument("--random-weights", action="store_true", help="random real-shape weights (no download)")
    p.add_argument("--max-new-tokens", type=int, default=512 if chat else 256)
    p.add_argument("--max-ctx", type=int, default=8192 if chat else 4096)
    p.add_argument("--temperature", type=float, help="0: greedy (default: generation_config.json)")
    p.add_argument("--top-k", type=int, help="0: off (default: generation_config.json)")
    p.add_argument("--top-p", type=float, help="1: off (default: generation_config.json)")
    p.add_argument("--seed", type=int, help="the same seed gives the same tokens")
    p.add_argument("--no-think", action="store_true", help="render the chat template with enable_thinking=False")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megakernel", description="Qwen3 decode in one persistent CUDA kernel")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="HF checkpoint -> flat weight file")
    c.add_argument("model")
    c.add_argument("out")
    c.add_argument("--quiet", action="store_true")
    g = sub.add_parser("generate", help="text in, streamed text out")
    _add_model_args(g)
    g.add_argument("--prompt", help="the user message (rendered with the chat template unless --raw)")
    g.add_argument("--prompt-ids", type=int, nargs="+", help="token ids instead of --prompt")
    g.add_argument("--raw", action="store_true", help="feed --prompt as is, without the chat template")
    g.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    g.add_argument("--json", action="store_true", help="one JSON object: text, tokens, TTFT, tok/s")
    ch = sub.add_parser("chat", help="multi-turn chat; the KV cache is kept across turns")
    _add_model_args(ch, chat=True)
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
        return _generate(args) if args.cmd == "generate" else _chat(args)
    except MegakernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
