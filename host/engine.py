"""Engine: the flat weights on the GPU, a KV cache, and greedy decoding through the megakernel.

    eng = Engine.from_pretrained("Qwen/Qwen3-0.6B")     # or a snapshot folder or a .bin
    new_tokens = eng.generate([9707, 11, 1879], max_new_tokens=32)

A prompt's tokens but the last are prefilled in bulk (host/prefill.py: matrix-matrix work on
the tensor cores, written straight into the kernel's KV cache); then one kernel launch runs the
last prompt token and every generated one, the token passed from step to step on the device.
prefill="kernel" instead feeds the whole prompt through the megakernel, one token per step.
"""
from __future__ import annotations

import ctypes
import os

from . import MegakernelError
from .launcher import CudaError, load_library
from .weight_loader import FlatFile, convert, resolve_snapshot

DEFAULT_MAX_CTX = 4096


def flat_path_for(path_or_id: str, progress: bool = True) -> str:
    """A flat .bin for a .bin, a snapshot folder or a hub id (converted once, cached beside it)."""
    if path_or_id.endswith(".bin"):
        return path_or_id
    folder = resolve_snapshot(path_or_id, quiet=not progress)
    out = os.path.join(folder, "megakernel.bin")
    if not os.access(folder, os.W_OK):
        from .launcher import cache_dir
        out = os.path.join(cache_dir(), "flat", path_or_id.strip("/").replace("/", "--") + ".bin")
    if not os.path.isfile(out):
        convert(folder, out, progress=progress)
    return out


class Engine:
    def __init__(self, flat_path: str, max_ctx: int = DEFAULT_MAX_CTX, grid: int = 0, verify: bool = True,
                 lib_path: str | None = None, quiet: bool = False):
        flat = FlatFile(flat_path, verify=verify)   # Python checks (and CRC) with clear messages
        self.config = flat.config
        flat.close()
        self.lib = load_library(lib_path, config=self._config_if_custom(), quiet=quiet)
        self.lib.check_flat_file(flat_path)
        if not 1 <= max_ctx <= self.config.max_position_embeddings:
            raise MegakernelError(f"max_ctx={max_ctx} is outside [1, {self.config.max_position_embeddings}]")
        err = ctypes.create_string_buffer(1024)
        self._h = self.lib.mk_create(flat_path.encode(), max_ctx, 0, grid, err, len(err))
        if not self._h:
            raise CudaError(err.value.decode())
        self.max_ctx, self.flat_path = max_ctx, flat_path
        info = (ctypes.c_longlong * 10)()
        self.lib.mk_info(self._h, info)
        self.grid, self.threads, self.ring_slots, self.smem_bytes, self.sms, self.cc = list(info)[:6]
        self.weight_bytes, self.scratch_bytes, self.kv_cache_bytes = info[7], info[8], info[9]
        # greedy launches use the LM head's int8 copy unless the engine was created with MK_LM_Q8=0
        self.has_lm_int8 = self.lib.mk_set_lm_q8(self._h, 1) == 0
        if not quiet:
            print(self.memory_report())
        self.pos = 0          # positions already in the KV cache (for continuing a conversation)
        self._pending = None  # the last generated token, not yet in the cache
        self._prefill = None  # host/prefill.py's Prefill over this engine's buffers, made on first use

    def memory_report(self) -> str:
        """What this engine holds on the GPU (the bulk prefill's PyTorch buffers come on top)."""
        return (f"megakernel: {(self.weight_bytes + self.scratch_bytes) / 1e9:.2f} GB on the GPU: weights "
                f"{self.weight_bytes / 1e9:.2f} GB + KV cache {self.kv_cache_bytes / 1e9:.2f} GB (max_ctx "
                f"{self.max_ctx}) + buffers {(self.scratch_bytes - self.kv_cache_bytes) / 1e6:.0f} MB; grid "
                f"{self.grid} x {self.threads} threads, ring up to {self.ring_slots} slots")

    @property
    def pending_token(self):
        """The last generated token, not yet in the cache (None before any generation)."""
        return self._pending

    @property
    def prefiller(self):
        """The bulk prefill over this engine's weights and KV cache (created on first use)."""
        if self._prefill is None:
            from .prefill import Prefill
            self._prefill = Prefill.from_engine(self)
        return self._prefill

    def _config_if_custom(self):
        """None when src/generated_layout.h fits this model, else the config to build for."""
        from .layout import emit_c_header
        from .launcher import SRC_DIR
        with open(os.path.join(SRC_DIR, "generated_layout.h")) as f:
            return None if f.read() == emit_c_header(self.config) else self.config

    @classmethod
    def from_pretrained(cls, path_or_id: str, max_ctx: int = DEFAULT_MAX_CTX, progress: bool = True, **kw) -> "Engine":
        return cls(flat_path_for(path_or_id, progress=progress), max_ctx=max_ctx, quiet=not progress, **kw)

    # ------------------------------------------------------------------------------------ runs
    def _handle(self):
        if not getattr(self, "_h", None):
            raise MegakernelError("this Engine is closed; create a new one")
        return self._h

    def _check(self, rc: int):
        if rc != 0:
            raise CudaError(self.lib.mk_error(self._h).decode())

    def run(self, forced: list, pos0: int, n_steps: int, start_token: int = 0, debug: bool = False) -> list:
        """One launch of n_steps steps from position pos0; returns the argmax of every step run."""
        n = len(forced)
        arr = (ctypes.c_int * max(n, 1))(*forced)
        out = (ctypes.c_int * n_steps)()
        done = ctypes.c_int(0)
        self._check(self.lib.mk_run(self._handle(), arr, n, pos0, n_steps, start_token, out, ctypes.byref(done), int(debug)))
        return list(out)[: done.value]

    def set_eos(self, ids):
        ids = list(ids)
        self._check(self.lib.mk_set_eos(self._handle(), (ctypes.c_int * max(len(ids), 1))(*ids), len(ids)))

    def set_lm_int8(self, on: bool):
        """Greedy launches choose the token from the LM head's int8 copy (the default) or from the
        bf16 LM head; the tokens are the same (src/lm_head_q8.cuh). Engines created with
        MK_LM_Q8=0 have no int8 copy."""
        rc = self.lib.mk_set_lm_q8(self._handle(), int(bool(on)))
        if rc != 0:
            raise MegakernelError(self.lib.mk_error(self._h).decode())

    def set_sampling(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     rng_offset: int = 0) -> int:
        """Token choice of the next launches (0 / 0 / 1.0: greedy). Returns the seed used."""
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        seed &= (1 << 64) - 1
        rc = self.lib.mk_set_sampling(self._handle(), float(temperature), int(top_k), float(top_p), seed, rng_offset)
        if rc != 0:
            raise MegakernelError(self.lib.mk_error(self._h).decode())
        return seed

    def _start(self, prompt_ids, max_new_tokens, eos_ids, reset, prefill, sampling) -> tuple:
        """Checks, sampling and EOS set-up, bulk prefill; returns (forced ids, start position)."""
        if prefill not in ("bulk", "kernel"):
            raise MegakernelError(f"prefill={prefill!r}; use 'bulk' or 'kernel'")
        prompt_ids = [int(t) for t in prompt_ids]
        if not reset and self._pending is not None:
            prompt_ids = [self._pending] + prompt_ids
        if not prompt_ids:
            raise MegakernelError("empty prompt; give at least one token id")
        if max_new_tokens < 1:
            raise MegakernelError(f"max_new_tokens={max_new_tokens}; it must be at least 1")
        bad = [t for t in prompt_ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise MegakernelError(f"token id {bad[0]} is outside [0, {self.config.vocab_size}); "
                                  "use ids from this model's tokenizer")
        start = 0 if reset else self.pos
        need = start + len(prompt_ids) + max_new_tokens
        if need > self.max_ctx:
            raise MegakernelError(f"prompt ({len(prompt_ids)} tokens after {start} cached) + max_new_tokens "
                                  f"({max_new_tokens}) = {need} exceeds max_ctx={self.max_ctx}; shorten the "
                                  "prompt or raise max_ctx")
        self.set_sampling(**sampling)
        self.set_eos(eos_ids)
        if prefill == "bulk" and len(prompt_ids) > 1:
            self.prefiller(prompt_ids[:-1], start)
            start, prompt_ids = start + len(prompt_ids) - 1, prompt_ids[-1:]
        return prompt_ids, start

    def generate(self, prompt_ids: list, max_new_tokens: int, eos_ids=(), reset: bool = True,
                 prefill: str = "bulk", temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None) -> list:
        """Continuation of prompt_ids (greedy unless temperature > 0); stops after max_new_tokens
        or an EOS id, all in one launch.

        reset=False continues the conversation in the cache: the last token generated before
        (not yet in the cache) goes in first, then prompt_ids (which may then be empty).
        prefill: "bulk" (all prompt tokens but the last in one matrix pass) or "kernel" (every
        prompt token through the megakernel). Sampling: temperature, top_k (0: off), top_p
        (1: off), seed (None: a fresh random one); the same seed gives the same tokens.
        """
        forced, start = self._start(prompt_ids, max_new_tokens, eos_ids, reset, prefill,
                                    dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
        out = self.run(forced, start, len(forced) + max_new_tokens - 1)
        new = out[len(forced) - 1:]
        self.pos = start + len(forced) + len(new) - 1  # the last new token is not yet in the cache
        self._pending = new[-1]
        return new

    def generate_stream(self, prompt_ids: list, max_new_tokens: int, eos_ids=(), reset: bool = True,
                        temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                        first_chunk: int = 4, chunk: int = 32):
        """As generate(), yielding lists of new tokens as they are produced: the decode runs in
        launches of `chunk` steps (`first_chunk` first, for a quick first token); each launch
        continues from the device token of the one before, so the tokens are those of generate()."""
        forced, start = self._start(prompt_ids, max_new_tokens, eos_ids, reset, "bulk",
                                    dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
        done, n = 0, min(first_chunk, max_new_tokens)
        out = self.run(forced, start, len(forced) + n - 1)[len(forced) - 1:]
        next_pos = start + len(forced) - 1 + len(out)  # where the last new token (pending) goes
        while True:
            done += len(out)
            self.pos, self._pending = next_pos, out[-1]
            yield out
            if len(out) < n or done >= max_new_tokens or out[-1] in eos_ids:
                return
            n = min(chunk, max_new_tokens - done)
            out = self.run([], next_pos, n, start_token=out[-1])
            next_pos += len(out)

    def time_to_first_token(self, prompt_ids: list) -> tuple:
        """(first token, milliseconds) from a fresh cache: bulk prefill + the first decode step."""
        import time
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids or len(prompt_ids) > self.max_ctx:
            raise MegakernelError(f"prompt of {len(prompt_ids)} tokens; it must have 1..{self.max_ctx}")
        self.set_eos([])
        self.set_sampling()
        t0 = time.perf_counter()
        if len(prompt_ids) > 1:
            self.prefiller(prompt_ids[:-1], 0)
        tok = self.run(prompt_ids[-1:], len(prompt_ids) - 1, 1)[0]
        ms = (time.perf_counter() - t0) * 1e3
        self.pos, self._pending = len(prompt_ids), tok
        return tok, ms

    def debug_state(self):
        """(hidden (layers, 2, hidden), logits (vocab,)) of the last debug run, as numpy arrays."""
        import numpy as np
        c = self.config
        hidden = np.zeros((c.num_hidden_layers, 2, c.hidden_size), dtype=np.float32)
        logits = np.zeros(c.vocab_size, dtype=np.float32)
        fp = ctypes.POINTER(ctypes.c_float)
        self._check(self.lib.mk_get_debug(self._handle(), hidden.ctypes.data_as(fp), logits.ctypes.data_as(fp)))
        return hidden, logits

    def last_ms(self) -> float:
        return float(self.lib.mk_last_ms(self._handle()))

    def bytes_per_token(self, context: int) -> float:
        return float(self.lib.mk_bytes_per_token(self._handle(), context))

    def close(self):
        self._prefill = None  # its views point into memory freed below
        if getattr(self, "_h", None):
            self.lib.mk_destroy(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
