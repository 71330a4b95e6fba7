"""Text in, text out: the snapshot's tokenizer.json, its chat template, incremental decoding.

    tok = Tokenizer.from_snapshot(folder)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}], enable_thinking=False))
    dec = StreamDecoder(tok)
    for chunk in engine.generate_stream(ids, 64): print(dec.push(chunk), end="", flush=True)

The chat template (tokenizer_config.json's "chat_template", or chat_template.jinja) is rendered
with jinja2 the way HF transformers' apply_chat_template renders it: a sandboxed environment
with trim_blocks and lstrip_blocks, the loop-controls extension, a `tojson` filter, the
`raise_exception` and `strftime_now` globals and the special tokens as variables; tests check
the rendered text against transformers itself. generation_config.json gives the EOS ids and
the sampling defaults.
"""
from __future__ import annotations

import datetime
import json
import os

from . import MegakernelError


def _token_str(v):
    return v.get("content") if isinstance(v, dict) else v


class Tokenizer:
    def __init__(self, tokenizer_json: str, tokenizer_config: dict | None = None, chat_template: str | None = None,
                 generation_config: dict | None = None):
        from tokenizers import Tokenizer as _Tok
        self.tok = _Tok.from_file(tokenizer_json)
        cfg = tokenizer_config or {}
        self.chat_template = chat_template or cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in self.chat_template}
            self.chat_template = named.get("default", next(iter(named.values()), None))
        self.special = {k: _token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        gen = generation_config or {}
        eos = gen.get("eos_token_id", [])
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        if not self.eos_ids and self.special["eos_token"]:
            tid = self.tok.token_to_id(self.special["eos_token"])
            self.eos_ids = [tid] if tid is not None else []
        self.generation_defaults = {k: gen[k] for k in ("temperature", "top_k", "top_p", "do_sample") if k in gen}

    @classmethod
    def from_snapshot(cls, folder: str) -> "Tokenizer":
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise MegakernelError(f"{folder}: no tokenizer.json; use a full snapshot (e.g. Qwen/Qwen3-0.6B) "
                                  "or pass token ids")

        def load(name):
            p = os.path.join(folder, name)
            if not os.path.isfile(p):
                return None
            with open(p, encoding="utf-8") as f:
                return f.read() if name.endswith(".jinja") else json.load(f)
        return cls(path, load("tokenizer_config.json"), load("chat_template.jinja"), load("generation_config.json"))

    def sampling_defaults(self) -> dict:
        """temperature / top_k / top_p from generation_config.json (greedy when do_sample is false)."""
        d = self.generation_defaults
        return dict(temperature=d.get("temperature", 0.0) if d.get("do_sample", True) else 0.0,
                    top_k=d.get("top_k", 0), top_p=d.get("top_p", 1.0))

    def chat_turn(self, message: str, enable_thinking: bool = True, pending: int | None = None) -> str:
        """The text one user turn adds: the turn and the assistant prompt. With the cache holding
        earlier turns, pending is the engine's last generated token (not yet in the cache): an
        answer that stopped at EOS gets its newline, one cut short by max_new_tokens is closed."""
        text = self.apply_chat_template([{"role": "user", "content": message}], enable_thinking=enable_thinking)
        if pending is None:
            return text
        return ("\n" if pending in self.eos_ids else "<|im_end|>\n") + text

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list:
        """Token ids of text as is (special tokens written in the text are recognized)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True,
                            enable_thinking: bool = True, **kwargs) -> str:
        """The prompt text for these messages, as HF's apply_chat_template(tokenize=False) makes it."""
        if not self.chat_template:
            raise MegakernelError("this tokenizer has no chat template; use a raw prompt (--raw)")
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise MegakernelError(f"chat template: {message}")

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        variables = {k: v for k, v in self.special.items() if v is not None}
        variables.update(kwargs)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
            **variables)


def stream_generate(eng, tok, ids: list, max_new_tokens: int, reset: bool = True, echo: bool = True,
                    **sampling) -> dict:
    """Engine.generate_stream with the text printed as it comes (echo; token ids without a
    tokenizer). Returns tokens, text, counts, TTFT (ms) and the decode rate after the first token."""
    import time
    dec = StreamDecoder(tok) if tok else None
    eos = tok.eos_ids if tok else []
    out, t0, t_first = [], time.perf_counter(), None
    try:
        for chunk in eng.generate_stream(ids, max_new_tokens, eos_ids=eos, reset=reset, **sampling):
            t_first = t_first or time.perf_counter()
            out += chunk
            if echo:
                print(dec.push(chunk) if dec else " ".join(map(str, chunk)) + " ", end="", flush=True)
    finally:
        if echo and dec:
            print(dec.flush(), end="", flush=True)
    t1 = time.perf_counter()
    rate = (len(out) - 1) / (t1 - t_first) if len(out) > 1 and t1 > t_first else 0.0
    return dict(tokens=out, text=tok.decode(out) if tok else None, new_tokens=len(out), prompt_tokens=len(ids),
                ttft_ms=(t_first - t0) * 1e3, tok_s=rate, stopped_on_eos=bool(out and out[-1] in eos),
                sampling={k: v for k, v in sampling.items() if k != "seed"})


class StreamDecoder:
    """Incremental detokenization: push new ids, get the new text. Text that ends inside a
    multi-byte character (decoded as U+FFFD) is held back until its remaining bytes arrive."""

    def __init__(self, tok: Tokenizer, skip_special_tokens: bool = True):
        self.tok, self.skip = tok, skip_special_tokens
        self.ids: list = []
        self.emitted = 0  # characters of the decoded text already returned

    def push(self, new_ids) -> str:
        self.ids.extend(int(t) for t in new_ids)
        text = self.tok.decode(self.ids, self.skip)
        if text.endswith("\ufffd"):
            return ""
        out, self.emitted = text[self.emitted:], len(text)
        return out

    def flush(self) -> str:
        text = self.tok.decode(self.ids, self.skip)
        out, self.emitted = text[self.emitted:], len(text)
        return out
