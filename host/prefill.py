"""Bulk prefill: a prompt's K and V for every layer in one pass of matrix-matrix work.

Decoding a prompt one token per step streams all weights once per token; a prompt of T tokens
is instead T-row matrix products on the tensor cores (cuBLAS) plus causal attention
(scaled_dot_product_attention), run by PyTorch directly on the megakernel's own weight buffer
and KV cache (zero-copy views through __cuda_array_interface__), so decode continues from the
cache it leaves:

    pf = Prefill.from_engine(engine)
    pf(prompt_ids[:-1], start=0)       # K, V of positions 0..T-2 written into the kernel's cache
    engine.run(prompt_ids[-1:], T - 1, n_new)   # the last prompt token decodes the first new one

Numerics: matrix inputs in bf16 (as the cache and weights), accumulation, norms, RoPE, the
residual stream and softmax statistics in float32. Fresh prompts (start == 0) on a GPU replay a
CUDA graph captured per power-of-two length bucket on its second use (positions past the prompt get padding
K/V, which decode overwrites before it reads them); longer prompts and continuations run eagerly.
The same code runs on CPU tensors (tests compare it with host/reference.py there).
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from . import MegakernelError
from .config import ModelConfig
from .weight_loader import FlatFile

GRAPH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


class _DeviceBuffer:
    """A raw device allocation presented to torch.as_tensor without a copy."""

    def __init__(self, ptr: int, nbytes: int):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "version": 3, "strides": None}


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in x's dtype (float32 here); w float32 or None."""
    return F.rms_norm(x, (x.shape[-1],), w, eps)


class Prefill:
    """Writes K/V of many positions at once into a cache of layout (layers, kv_heads, ctx, head_dim)."""

    def __init__(self, cfg: ModelConfig, weights: dict, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 dtype=torch.bfloat16):
        if dtype != torch.bfloat16:  # a float32 pass (tests): upcast the bf16 matrices once
            weights = {n: t.to(dtype) if t.dtype == torch.bfloat16 else t for n, t in weights.items()}
        self.cfg, self.w, self.k_cache, self.v_cache, self.dtype = cfg, weights, k_cache, v_cache, dtype
        # float32 copies of the small vectors (fewer kernels per layer: RMSNorm with its weight in
        # one call; q and k normalized together, each head row by its own norm weight)
        Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.norm32 = {}
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}."
            self.norm32[p + "input_norm"] = weights[p + "input_norm"].float()
            self.norm32[p + "post_norm"] = weights[p + "post_norm"].float()
            self.norm32[p + "qk_norm"] = torch.cat((weights[p + "q_norm"].float().expand(Hq, -1),
                                                    weights[p + "k_norm"].float().expand(Hkv, -1)))
        self.max_ctx = k_cache.shape[2]
        self.device = k_cache.device
        self._graphs = {}
        self._uses = {}

    @classmethod
    def from_engine(cls, engine) -> "Prefill":
        """Views of an Engine's weights and KV cache on its GPU (no copy); valid while it is open."""
        vals = (ctypes.c_ulonglong * 6)()
        engine.lib.mk_device_buffers(engine._handle(), vals)
        wptr, wbytes, kptr, vptr, max_ctx, dev = list(vals)
        device = torch.device("cuda", dev)
        cfg = engine.config

        def view(ptr, nbytes):
            with torch.cuda.device(device):
                return torch.as_tensor(_DeviceBuffer(ptr, nbytes), device=device)

        blob = view(wptr, wbytes)
        weights = {}
        with FlatFile(engine.flat_path, verify=False) as flat:
            for name, (off, nbytes, dtype, shape) in flat.entries.items():
                t = blob[off:off + nbytes].view(torch.bfloat16 if dtype == 1 else torch.float32)
                weights[name] = t.view(shape)
        kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, max_ctx, cfg.head_dim)
        kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * max_ctx * cfg.head_dim
        k = view(kptr, kv_bytes).view(torch.bfloat16).view(kv_shape)
        v = view(vptr, kv_bytes).view(torch.bfloat16).view(kv_shape)
        return cls(cfg, weights, k, v)

    # ------------------------------------------------------------------------------ the pass
    def _forward(self, tokens: torch.Tensor, start: int) -> None:
        cfg, w, dt = self.cfg, self.w, self.dtype
        T, d, eps = tokens.shape[0], cfg.head_dim, cfg.rms_norm_eps
        Hq, Hkv, n = cfg.num_attention_heads, cfg.num_key_value_heads, start + tokens.shape[0]
        pos = torch.arange(start, n, device=self.device, dtype=torch.float32)
        freqs = pos[:, None] * w["rope_inv_freq"].float()[None, :]            # (T, d/2)
        freqs = torch.cat((freqs, freqs), dim=-1)[:, None, :]                 # (T, 1, d)
        cos, sin = freqs.cos(), freqs.sin()
        if start == 0:
            mask = None
        else:  # query t (position start+t) sees keys 0..start+t
            mask = torch.arange(n, device=self.device)[None, :] <= (start + torch.arange(T, device=self.device))[:, None]
        nq = Hq + Hkv                                                         # q and k heads
        h = w["embed"][tokens].float()                                        # (T, hidden) residual, f32
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}."
            x = _rms(h, self.norm32[p + "input_norm"], eps).to(dt)
            qkv = (x @ w[p + "wqkv"].T).float().view(T, nq + Hkv, d)         # heads: q | k | v
            qk = _rms(qkv[:, :nq], None, eps) * self.norm32[p + "qk_norm"]    # per-head RMSNorm, q and k
            qk = qk * cos + self._rotate_half(qk) * sin                       # RoPE
            k, v = qk[:, Hq:], qkv[:, nq:]
            self.k_cache[i, :, start:n] = k.transpose(0, 1)
            self.v_cache[i, :, start:n] = v.transpose(0, 1)
            keys = self.k_cache[i, :, :n].unsqueeze(0).to(dt)                 # (1, Hkv, n, d)
            vals = self.v_cache[i, :, :n].unsqueeze(0).to(dt)
            q = qk[:, :Hq].transpose(0, 1).unsqueeze(0).to(dt)                # (1, Hq, T, d)
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, is_causal=mask is None,
                                               scale=d ** -0.5, enable_gqa=True)
            o = o[0].transpose(0, 1).reshape(T, cfg.q_dim)
            h = h + (o @ w[p + "wo"].T).float()
            x = _rms(h, self.norm32[p + "post_norm"], eps).to(dt)
            gu = (x @ w[p + "wgu"].T).float().view(T, cfg.intermediate_size, 2)  # rows interleave gate, up
            act = (F.silu(gu[..., 0]) * gu[..., 1]).to(dt)
            h = h + (act @ w[p + "wdown"].T).float()

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        """(x1, x2) -> (-x2, x1) on the halves of the last dim (HF's rotate-half RoPE pairing)."""
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    # ------------------------------------------------------------------------------ entry
    @torch.no_grad()
    def __call__(self, tokens, start: int = 0) -> None:
        """Write K and V of `tokens` at positions start.. into the cache; returns when done."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        T = int(tokens.numel())
        if T == 0:
            return
        if start < 0 or start + T > self.max_ctx:
            raise MegakernelError(f"prefill of {T} tokens at position {start} does not fit max_ctx="
                                  f"{self.max_ctx}; shorten the prompt or raise max_ctx")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size:
            raise MegakernelError(f"a token id is outside [0, {self.cfg.vocab_size}); use this model's tokenizer")
        tokens = tokens.to(self.device)
        bucket = next((b for b in GRAPH_BUCKETS if b >= T), None)
        self._uses[bucket] = self._uses.get(bucket, 0) + 1
        # a bucket's graph is captured on its second use (capture costs ~1 s; one-shot runs go eager)
        if (self.device.type == "cuda" and start == 0 and bucket is not None and bucket <= self.max_ctx
                and (bucket in self._graphs or self._uses[bucket] >= 2)):
            graph, static = self._graph(bucket)
            static.zero_()
            static[:T] = tokens
            graph.replay()
        else:
            self._forward(tokens, start)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the megakernel runs next, on another stream

    def _graph(self, bucket: int):
        if bucket not in self._graphs:
            static = torch.zeros(bucket, dtype=torch.long, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS handles, kernels)
                self._forward(static, 0)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._forward(static, 0)
            self._graphs[bucket] = (graph, static)
        return self._graphs[bucket]

    def warmup(self, lengths=GRAPH_BUCKETS) -> None:
        """Capture the graphs for these prompt lengths now rather than on first use."""
        if self.device.type != "cuda":
            return
        for T in lengths:
            bucket = next((b for b in GRAPH_BUCKETS if b >= T), None)
            if bucket is not None and bucket <= self.max_ctx:
                self._graph(bucket)
