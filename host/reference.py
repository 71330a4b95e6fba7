"""A plain-PyTorch Qwen3 dense decoder: the truth every kernel is checked against.

Batch 1, a static KV cache, prefill (many tokens) and decode (one token) through
the same forward(). Computes in float32 (the reference for validation) or bf16.

    model = Qwen3Reference.from_state_dict(cfg, hf_state_dict, dtype=torch.float32)
    logits = model(torch.tensor([1, 2, 3]), start_pos=0)    # (3, vocab) prefill
    logits = model(torch.tensor([4]), start_pos=3)          # (1, vocab) decode

Tested against HF transformers' Qwen3ForCausalLM in tests/test_reference.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, statistics in float32, as HF Qwen3RMSNorm."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim.

    RoPE pairs dimension i with i + head_dim/2 (not adjacent pairs):
        out[i]       = x[i] cos(p w_i) - x[i+d/2] sin(p w_i)
        out[i + d/2] = x[i+d/2] cos(p w_i) + x[i] sin(p w_i)
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3Reference(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype=torch.float32, max_ctx: int = 2048, device="cpu"):
        super().__init__()
        self.cfg, self.dtype, self.max_ctx = cfg, dtype, max_ctx
        L, kvh, d = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        # Static KV cache: (layers, max_ctx, kv_heads, head_dim), filled as positions arrive.
        self.k_cache = torch.zeros(L, max_ctx, kvh, d, dtype=dtype, device=device)
        self.v_cache = torch.zeros(L, max_ctx, kvh, d, dtype=dtype, device=device)
        # RoPE inverse frequencies w_i = theta^(-2i/d), float32 as in HF: (d/2,)
        self.inv_freq = 1.0 / (cfg.rope_theta ** (
            torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        self.w = {}

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, sd: dict, dtype=torch.float32, max_ctx: int = 2048,
                        device="cpu") -> "Qwen3Reference":
        """sd: HF parameter names -> tensors (any float dtype; cast to `dtype`)."""
        m = cls(cfg, dtype, max_ctx, device)
        m.w = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
        if cfg.tie_word_embeddings or "lm_head.weight" not in m.w:
            m.w["lm_head.weight"] = m.w["model.embed_tokens.weight"]
        return m

    def rope(self, positions: torch.Tensor):
        """cos, sin of shape (T, head_dim) for integer positions (T,)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]     # (T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)                          # (T, d)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def attention(self, i: int, x: torch.Tensor, start: int, cos, sin) -> torch.Tensor:
        cfg, w, p = self.cfg, self.w, f"model.layers.{i}.self_attn."
        T, d = x.shape[0], cfg.head_dim
        q = (x @ w[p + "q_proj.weight"].T).view(T, cfg.num_attention_heads, d)   # (T, Hq, d)
        k = (x @ w[p + "k_proj.weight"].T).view(T, cfg.num_key_value_heads, d)   # (T, Hkv, d)
        v = (x @ w[p + "v_proj.weight"].T).view(T, cfg.num_key_value_heads, d)   # (T, Hkv, d)
        # Qwen3: RMSNorm over each head's d values, before RoPE
        q = rms_norm(q, w[p + "q_norm.weight"], cfg.rms_norm_eps)
        k = rms_norm(k, w[p + "k_norm.weight"], cfg.rms_norm_eps)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        self.k_cache[i, start:start + T] = k
        self.v_cache[i, start:start + T] = v
        n = start + T
        keys = self.k_cache[i, :n].repeat_interleave(cfg.group_size, dim=1)    # (n, Hq, d)
        vals = self.v_cache[i, :n].repeat_interleave(cfg.group_size, dim=1)    # (n, Hq, d)
        scores = torch.einsum("thd,nhd->htn", q, keys) / math.sqrt(d)          # (Hq, T, n)
        # causal: query t (at position start+t) sees keys 0..start+t
        mask = torch.arange(n, device=x.device)[None, :] > (start + torch.arange(T, device=x.device))[:, None]
        scores = scores.masked_fill(mask[None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(self.dtype)
        out = torch.einsum("htn,nhd->thd", probs, vals).reshape(T, cfg.q_dim)  # (T, Hq*d)
        return out @ w[p + "o_proj.weight"].T                                   # (T, hidden)

    def mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        w, p = self.w, f"model.layers.{i}.mlp."
        gate = x @ w[p + "gate_proj.weight"].T                                  # (T, inter)
        up = x @ w[p + "up_proj.weight"].T                                      # (T, inter)
        return (F.silu(gate) * up) @ w[p + "down_proj.weight"].T                # (T, hidden)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start_pos: int, hidden_out: list | None = None):
        """tokens (T,) at positions start_pos.. -> logits (T, vocab) in float32.

        hidden_out, if given, receives the residual stream after each attention and
        each MLP block of every layer (2 * layers tensors of shape (T, hidden)).
        """
        cfg, w = self.cfg, self.w
        T = tokens.shape[0]
        if start_pos + T > self.max_ctx:
            raise ValueError(f"positions up to {start_pos + T} exceed max_ctx={self.max_ctx}")
        cos, sin = self.rope(torch.arange(start_pos, start_pos + T, device=tokens.device))
        h = w["model.embed_tokens.weight"][tokens]                             # (T, hidden)
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            h = h + self.attention(i, rms_norm(h, w[p + "input_layernorm.weight"], cfg.rms_norm_eps),
                                   start_pos, cos, sin)
            if hidden_out is not None:
                hidden_out.append(h.float())
            h = h + self.mlp(i, rms_norm(h, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps))
            if hidden_out is not None:
                hidden_out.append(h.float())
        h = rms_norm(h, w["model.norm.weight"], cfg.rms_norm_eps)
        return (h @ w["lm_head.weight"].T).float()                             # (T, vocab)
