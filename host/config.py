"""ModelConfig: the Qwen3 dimensions, read once from a HuggingFace config.json.

Everything else (the flat file header, the kernel's compile-time constants, the
reference model) is derived from this object; no dimension is typed twice.
"""
from __future__ import annotations

import dataclasses
import json
import os

from . import MegakernelError

SUPPORTED_ARCHITECTURE = "Qwen3ForCausalLM"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int          # rows of the embedding / LM head (151936 for Qwen3-0.6B)
    hidden_size: int         # width of the residual stream (1024)
    intermediate_size: int   # SwiGLU inner width (3072)
    num_hidden_layers: int   # decoder layers (28)
    num_attention_heads: int # query heads (16)
    num_key_value_heads: int # key/value heads, shared by groups of query heads (8)
    head_dim: int            # width of each head (128); q width = heads * head_dim
    rope_theta: float        # RoPE base frequency (1e6)
    rms_norm_eps: float      # epsilon inside every RMSNorm (1e-6)
    tie_word_embeddings: bool  # LM head shares the embedding matrix
    max_position_embeddings: int  # longest context the model was trained for (40960)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        archs = d.get("architectures") or []
        if SUPPORTED_ARCHITECTURE not in archs:
            raise MegakernelError(
                f"{source}: architectures={archs} is not {SUPPORTED_ARCHITECTURE}; "
                "this project runs dense Qwen3 checkpoints only (e.g. Qwen/Qwen3-0.6B)")
        try:
            heads = int(d["num_attention_heads"])
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads", heads)),
                head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
                rope_theta=float(d.get("rope_theta", 10000.0)),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                max_position_embeddings=int(d.get("max_position_embeddings", 40960)),
            )
        except KeyError as e:
            raise MegakernelError(f"{source}: missing field {e.args[0]!r}; use the config.json "
                                  "that ships with the checkpoint") from None
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise MegakernelError(f"{source}: num_attention_heads={heads} is not a multiple of "
                                  f"num_key_value_heads={cfg.num_key_value_heads}")
        if d.get("rope_scaling"):
            raise MegakernelError(f"{source}: rope_scaling={d['rope_scaling']} is not supported; "
                                  "remove it to run at the model's native context")
        return cfg

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise MegakernelError(f"{path}: config.json not found; point at a HuggingFace "
                                  "snapshot folder that contains config.json and *.safetensors")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise MegakernelError(f"{path}: not valid JSON ({e}); re-download config.json") from None
        return cls.from_dict(d, source=path)

    def to_hf_dict(self) -> dict:
        """A config.json dict that HF transformers' Qwen3Config accepts."""
        return {
            "architectures": [SUPPORTED_ARCHITECTURE], "model_type": "qwen3",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu", "attention_bias": False, "rope_scaling": None,
            "torch_dtype": "bfloat16", "use_sliding_window": False,
        }
