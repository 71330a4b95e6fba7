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
residual stream and softmax statistics in float32.
Kernels per layer (~11 on a GPU, scripts/prefill_kernels.py): the GEMMs write float32 directly and
add the residual in their epilogue (torch.mm / addmm with out_dtype, where PyTorch has them), the
elementwise work is three fused kernels of the megakernel library (src/prefill_ops.cuh), flash
attention reads the cache in place. A short prompt's prefill is launch-bound, so every kernel
counts. Without the library (CPU tensors: tests compare this path with host/reference.py there)
PyTorch ops do the elementwise work, RoPE as one batched matmul by per-position rotation matrices.
Fresh prompts (start == 0) on a GPU run padded to a power-of-two length bucket (positions past the
prompt get padding K/V, which decode overwrites before it reads them): eagerly on the bucket's
first use, then from a CUDA graph captured on its second, both with the same shapes and so the
same cache bit for bit; longer prompts and continuations run eagerly at their own length. Before its
first real pass a Prefill runs one pass over a scratch cache: a process's very first pass wrote a
cache that differed in its last bits from every later one (RESEARCH.md section 15).
"""
from __future__ import annotations

import contextlib
import ctypes

import torch
import torch.nn.functional as F

from . import MegakernelError
from .config import ModelConfig
from .weight_loader import FlatFile

GRAPH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def _sdpa_backends():
    """Flash attention first: it reads the cache's strided slices as they are (cuDNN, PyTorch's
    default on Hopper, copied K and V and the output: three more kernels per layer); the others
    stay as fallbacks (masks of continued prompts, GPUs without flash)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        return sdpa_kernel(order, set_priority=True)
    except (ImportError, TypeError, AttributeError):  # older PyTorch: its own choice
        return contextlib.nullcontext()


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
                 dtype=torch.bfloat16, ops=None):
        """ops: the megakernel library (launcher._Lib); on a GPU its fused prefill kernels
        (src/prefill_ops.cuh) replace the elementwise PyTorch ops, else PyTorch does all."""
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
        self._fp32_out, self._addmm_inplace = self._probe_fp32_out()
        self._ops = ops if (ops is not None and self.device.type == "cuda" and dtype == torch.bfloat16) else None
        self._warmed = self.device.type != "cuda"

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
        return cls(cfg, weights, k, v, ops=engine.lib)

    # ------------------------------------------------------------------------------ the pass
    def _mm(self, x: torch.Tensor, w: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        """acc + x @ w in float32 from bf16 inputs: one cuBLAS call with a float32 output (and the
        residual add in its epilogue) where this PyTorch has them, else matmul + cast (+ add)."""
        if self._fp32_out:
            if acc is None:
                return torch.mm(x, w, out_dtype=torch.float32)
            if self._addmm_inplace:  # no copy of acc into a new output first
                return torch.addmm(acc, x, w, out_dtype=torch.float32, out=acc)
            return torch.addmm(acc, x, w, out_dtype=torch.float32)
        y = (x @ w).float()
        return y if acc is None else acc + y

    def _probe_fp32_out(self) -> tuple:
        """Do torch.mm / addmm take out_dtype=float32 with bf16 inputs here (CUDA, PyTorch 2.8+),
        and addmm also out= its own accumulator? (fp32 outputs, in place)"""
        if self.device.type != "cuda" or self.dtype != torch.bfloat16:
            return False, False
        a = torch.ones(2, 8, dtype=torch.bfloat16, device=self.device)
        b = a.new_ones(8, 4)
        try:
            c = torch.ones(2, 4, dtype=torch.float32, device=self.device)
            ok = (torch.mm(a, b, out_dtype=torch.float32).dtype == torch.float32
                  and torch.equal(torch.addmm(c, a, b, out_dtype=torch.float32), torch.full_like(c, 9.0)))
        except (TypeError, RuntimeError):
            return False, False
        try:
            torch.addmm(c, a, b, out_dtype=torch.float32, out=c)
            inplace = torch.equal(c, torch.full_like(c, 9.0))
        except (TypeError, RuntimeError):
            inplace = False
        return ok, inplace

    @staticmethod
    def _rope_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(T, d, d): HF's rotate-half RoPE of position t as x @ R[t] (one batched matmul for every
        q and k head instead of five elementwise kernels):
        y[j] = x[j] cos_j - x[j + d/2] sin_j and y[j + d/2] = x[j + d/2] cos_j + x[j] sin_j, j < d/2."""
        T, half = cos.shape
        R = cos.new_zeros(T, 2 * half, 2 * half)
        j = torch.arange(half, device=cos.device)
        R[:, j, j] = cos
        R[:, j + half, j + half] = cos
        R[:, j + half, j] = -sin
        R[:, j, j + half] = sin
        return R

    def _forward(self, tokens: torch.Tensor, start: int) -> None:
        n = start + tokens.shape[0]
        pos = torch.arange(start, n, device=self.device, dtype=torch.float32)
        rope = None  # the fused kernels compute RoPE themselves
        if not self._ops:
            freqs = pos[:, None] * self.w["rope_inv_freq"].float()[None, :]   # (T, d/2)
            rope = self._rope_matrices(freqs.cos(), freqs.sin())              # (T, d, d)
        if start == 0:
            mask = None
        else:  # query t (position start+t) sees keys 0..start+t
            mask = torch.arange(n, device=self.device)[None, :] <= pos[:, None].long()
        h = self.w["embed"][tokens].float()                                   # (T, hidden) residual, f32
        with _sdpa_backends():
            if self._ops:
                self._layers_fused(h, mask, start)
            else:
                self._layers(h, rope, mask, start)

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            from .launcher import CudaError
            raise CudaError(f"prefill kernel {what} failed to launch (CUDA error {code})")

    def _layers_fused(self, h: torch.Tensor, mask, start: int) -> None:
        """_layers with src/prefill_ops.cuh's fused kernels for the elementwise work (GPU)."""
        cfg, w, ops = self.cfg, self.w, self._ops
        T, d, eps = h.shape[0], cfg.head_dim, cfg.rms_norm_eps
        Hq, n = cfg.num_attention_heads, start + h.shape[0]
        stream = torch.cuda.current_stream(self.device).cuda_stream
        x = torch.empty(T, cfg.hidden_size, dtype=torch.bfloat16, device=self.device)
        q = torch.empty(Hq, T, d, dtype=torch.bfloat16, device=self.device)
        act = torch.empty(T, cfg.intermediate_size, dtype=torch.bfloat16, device=self.device)
        inv_freq = w["rope_inv_freq"]
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}."
            self._check(ops.mk_prefill_rmsnorm(h.data_ptr(), self.norm32[p + "input_norm"].data_ptr(),
                                               x.data_ptr(), T, eps, stream), "rmsnorm")
            qkv = self._mm(x, w[p + "wqkv"].T)                                 # (T, qkv_dim) f32
            self._check(ops.mk_prefill_qkv(qkv.data_ptr(), self.norm32[p + "qk_norm"].data_ptr(),
                                           inv_freq.data_ptr(), start, T, q.data_ptr(),
                                           self.k_cache[i].data_ptr(), self.v_cache[i].data_ptr(),
                                           self.max_ctx, eps, stream), "qkv")
            o = F.scaled_dot_product_attention(q.unsqueeze(0), self.k_cache[i, :, :n].unsqueeze(0),
                                               self.v_cache[i, :, :n].unsqueeze(0), attn_mask=mask,
                                               is_causal=mask is None, scale=d ** -0.5, enable_gqa=True)
            h = self._mm(o[0].transpose(0, 1).reshape(T, cfg.q_dim), w[p + "wo"].T, h)
            self._check(ops.mk_prefill_rmsnorm(h.data_ptr(), self.norm32[p + "post_norm"].data_ptr(),
                                               x.data_ptr(), T, eps, stream), "rmsnorm")
            gu = self._mm(x, w[p + "wgu"].T)                                  # (T, 2 inter) f32: gate, up pairs
            self._check(ops.mk_prefill_silu_mul(gu.data_ptr(), act.data_ptr(), T, stream), "silu_mul")
            h = self._mm(act, w[p + "wdown"].T, h)

    def _layers(self, h: torch.Tensor, rope: torch.Tensor, mask, start: int) -> None:
        cfg, w, dt = self.cfg, self.w, self.dtype
        T, d, eps = h.shape[0], cfg.head_dim, cfg.rms_norm_eps
        Hq, Hkv, n = cfg.num_attention_heads, cfg.num_key_value_heads, start + h.shape[0]
        nq = Hq + Hkv                                                         # q and k heads
        act = torch.empty(T, cfg.intermediate_size, dtype=dt, device=self.device)
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}."
            x = _rms(h, self.norm32[p + "input_norm"], eps).to(dt)
            qkv = self._mm(x, w[p + "wqkv"].T).view(T, nq + Hkv, d)          # heads: q | k | v
            qk = _rms(qkv[:, :nq], None, eps) * self.norm32[p + "qk_norm"]    # per-head RMSNorm, q and k
            qk = torch.bmm(qk, rope)                                          # RoPE
            self.k_cache[i, :, start:n] = qk[:, Hq:].transpose(0, 1)
            self.v_cache[i, :, start:n] = qkv[:, nq:].transpose(0, 1)
            keys = self.k_cache[i, :, :n].unsqueeze(0).to(dt)                 # (1, Hkv, n, d)
            vals = self.v_cache[i, :, :n].unsqueeze(0).to(dt)
            q = qk[:, :Hq].transpose(0, 1).unsqueeze(0).to(dt)                # (1, Hq, T, d)
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, is_causal=mask is None,
                                               scale=d ** -0.5, enable_gqa=True)
            o = o[0].transpose(0, 1).reshape(T, cfg.q_dim)
            h = self._mm(o, w[p + "wo"].T, h)
            x = _rms(h, self.norm32[p + "post_norm"], eps).to(dt)
            gu = self._mm(x, w[p + "wgu"].T).view(T, cfg.intermediate_size, 2)  # rows interleave gate, up
            torch.mul(F.silu(gu[..., 0]), gu[..., 1], out=act)                # cast to dt on the way
            h = self._mm(act, w[p + "wdown"].T, h)

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
        if not self._warmed:
            self._warm_up()
        bucket = self._bucket(T) if self.device.type == "cuda" and start == 0 else None
        if bucket is None:
            self._forward(tokens, start)
        else:
            # Padded to the bucket on every use: the graph (captured on the second use; capture
            # costs ~1 s, one-shot runs go eager) and the first, eager use run the same GEMM shapes,
            # so the same cuBLAS kernels and bitwise the same cache (float32 GEMM outputs show any
            # change of kernel or split, and a near-tie token can follow it).
            self._uses[bucket] = self._uses.get(bucket, 0) + 1
            graph = None
            if bucket in self._graphs or self._uses[bucket] >= 2:
                graph, padded = self._graph(bucket)
            else:
                padded = torch.empty(bucket, dtype=torch.long, device=self.device)
            padded.zero_()
            padded[:T] = tokens
            if graph is not None:
                graph.replay()
            else:
                self._forward(padded, 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the megakernel runs next, on another stream

    def _warm_up(self) -> None:
        """One pass over a scratch cache before the first real one. The first pass of a process
        wrote a cache that differed in its last bits from every later pass of the same prompt
        (H100, PyTorch 2.11; GEMMs of the same shapes run before did not change that, a whole
        pass did), and a near-tie token could then follow it (RESEARCH.md section 15)."""
        cfg, n = self.cfg, GRAPH_BUCKETS[0]
        shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, n, cfg.head_dim)
        k = torch.zeros(shape, dtype=self.k_cache.dtype, device=self.device)
        v = torch.zeros_like(k)
        scratch = type(self).__new__(type(self))
        scratch.__dict__.update(self.__dict__, k_cache=k, v_cache=v, max_ctx=n)
        scratch._forward(torch.zeros(n, dtype=torch.long, device=self.device), 0)
        torch.cuda.synchronize(self.device)
        self._warmed = True

    def _bucket(self, T: int):
        """The graph bucket of a T-token fresh prompt, or None when it has none that fits max_ctx."""
        bucket = next((b for b in GRAPH_BUCKETS if b >= T), None)
        return bucket if bucket is not None and bucket <= self.max_ctx else None

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
            bucket = self._bucket(T)
            if bucket is not None:
                self._graph(bucket)
