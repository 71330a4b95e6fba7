"""The flat weight file: header format and tensor order, defined once.

A flat file is a fixed header, a tensor table, then the payload: every tensor
the kernel reads, in the order it streams them, each aligned to ALIGN bytes.

    [FlatHeader][TensorEntry x n_tensors][pad to ALIGN][payload ...]

Fusions the kernel relies on (built by weight_loader.py, undone by FlatFile.to_hf_state_dict):
    wqkv = cat(q_proj, k_proj, v_proj)           (q_dim + 2*kv_dim, hidden)
    wgu  = rows interleaved gate0, up0, gate1, ... (2*intermediate, hidden)

`python -m megakernel.layout --emit-header src/generated_layout.h --config CONFIG`
writes the C side (header structs, tensor indices, model dimensions); a test
checks that the committed header is what this module generates.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import struct
import sys

from .config import ModelConfig

MAGIC = b"QW3MEGA\0"
FORMAT_VERSION = 1
ALIGN = 256                      # tensor alignment in the payload (>= 16 for bulk copies)
DTYPE_BF16, DTYPE_F32 = 1, 2
DTYPE_SIZE = {DTYPE_BF16: 2, DTYPE_F32: 4}
NAME_BYTES = 48

# (field, struct code, C type). Ordered so every field is naturally aligned: no padding.
HEADER_FIELDS = [
    ("magic", "8s", "char magic[8]"),
    ("header_bytes", "Q", "uint64_t header_bytes"),      # payload starts at this offset
    ("payload_bytes", "Q", "uint64_t payload_bytes"),
    ("rope_theta", "d", "double rope_theta"),
    ("rms_norm_eps", "d", "double rms_norm_eps"),
    ("version", "I", "uint32_t version"),
    ("payload_crc32", "I", "uint32_t payload_crc32"),    # zlib CRC-32 of the payload
    ("n_tensors", "I", "uint32_t n_tensors"),
    ("vocab_size", "I", "uint32_t vocab_size"),
    ("hidden_size", "I", "uint32_t hidden_size"),
    ("intermediate_size", "I", "uint32_t intermediate_size"),
    ("num_hidden_layers", "I", "uint32_t num_hidden_layers"),
    ("num_attention_heads", "I", "uint32_t num_attention_heads"),
    ("num_key_value_heads", "I", "uint32_t num_key_value_heads"),
    ("head_dim", "I", "uint32_t head_dim"),
    ("max_position_embeddings", "I", "uint32_t max_position_embeddings"),
    ("tie_word_embeddings", "I", "uint32_t tie_word_embeddings"),
]
HEADER_STRUCT = struct.Struct("<" + "".join(code for _, code, _ in HEADER_FIELDS))

TENSOR_FIELDS = [
    ("name", f"{NAME_BYTES}s", f"char name[{NAME_BYTES}]"),
    ("shape", "4Q", "uint64_t shape[4]"),
    ("offset", "Q", "uint64_t offset"),                  # from the payload start
    ("nbytes", "Q", "uint64_t nbytes"),
    ("dtype", "I", "uint32_t dtype"),
    ("ndim", "I", "uint32_t ndim"),
]
TENSOR_STRUCT = struct.Struct("<" + "".join(code for _, code, _ in TENSOR_FIELDS))

# Per-layer tensors, in stream order. The kernel indexes them by these positions.
LAYER_TENSORS = ["input_norm", "wqkv", "q_norm", "k_norm", "wo", "post_norm", "wgu", "wdown"]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: int = DTYPE_BF16

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZE[self.dtype]
        for s in self.shape:
            n *= s
        return n


def layer_shapes(cfg: ModelConfig) -> dict:
    h, d = cfg.hidden_size, cfg.head_dim
    return {
        "input_norm": (h,), "wqkv": (cfg.qkv_dim, h), "q_norm": (d,), "k_norm": (d,),
        "wo": (h, cfg.q_dim), "post_norm": (h,), "wgu": (2 * cfg.intermediate_size, h),
        "wdown": (h, cfg.intermediate_size),
    }


def tensor_specs(cfg: ModelConfig) -> list:
    """Every tensor of the flat file, in file (= kernel stream) order."""
    specs = [TensorSpec("embed", (cfg.vocab_size, cfg.hidden_size))]
    shapes = layer_shapes(cfg)
    for i in range(cfg.num_hidden_layers):
        specs += [TensorSpec(f"layers.{i}.{t}", shapes[t]) for t in LAYER_TENSORS]
    specs.append(TensorSpec("final_norm", (cfg.hidden_size,)))
    specs.append(TensorSpec("rope_inv_freq", (cfg.head_dim // 2,), DTYPE_F32))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head", (cfg.vocab_size, cfg.hidden_size)))
    return specs


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def header_bytes(n_tensors: int) -> int:
    return align_up(HEADER_STRUCT.size + n_tensors * TENSOR_STRUCT.size, 4096)


def plan_offsets(specs: list) -> tuple:
    """Payload offsets of each tensor and the payload size."""
    offsets, off = [], 0
    for s in specs:
        offsets.append(off)
        off = align_up(off + s.nbytes)
    return offsets, off


def _c_layout_checks() -> list:
    lines = []
    for st, fields, cname in ((HEADER_STRUCT, HEADER_FIELDS, "FlatHeader"),
                              (TENSOR_STRUCT, TENSOR_FIELDS, "FlatTensorEntry")):
        off = 0
        for _, code, _ in fields:
            sz = struct.calcsize("<" + code)
            align = min(8, struct.calcsize("<" + code.lstrip("0123456789")) if code[-1] != "s" else 1)
            assert off % align == 0, f"{cname}: field at {off} is not aligned"
            off += sz
        assert off == st.size
        lines.append(f'static_assert(sizeof({cname}) == {st.size}, "{cname} layout drifted");')
    return lines


def emit_c_header(cfg: ModelConfig) -> str:
    """The C/CUDA view of this module: structs, tensor indices, model dimensions."""
    idx = {t: i for i, t in enumerate(LAYER_TENSORS)}
    n_layers = cfg.num_hidden_layers
    out = [
        "// GENERATED by `python -m megakernel.layout --emit-header` from host/layout.py and the",
        "// model's config.json. Do not edit: change host/layout.py and regenerate.",
        "#pragma once",
        "#include <stdint.h>",
        "",
        f'#define MK_FLAT_MAGIC "{MAGIC.rstrip(bytes(1)).decode()}"',
        f"#define MK_FLAT_VERSION {FORMAT_VERSION}",
        f"#define MK_FLAT_ALIGN {ALIGN}",
        f"#define MK_DTYPE_BF16 {DTYPE_BF16}",
        f"#define MK_DTYPE_F32 {DTYPE_F32}",
        "",
        "// Model dimensions (from config.json)",
        f"#define MK_VOCAB {cfg.vocab_size}",
        f"#define MK_HIDDEN {cfg.hidden_size}",
        f"#define MK_INTER {cfg.intermediate_size}",
        f"#define MK_LAYERS {n_layers}",
        f"#define MK_Q_HEADS {cfg.num_attention_heads}",
        f"#define MK_KV_HEADS {cfg.num_key_value_heads}",
        f"#define MK_HEAD_DIM {cfg.head_dim}",
        f"#define MK_MAX_POS {cfg.max_position_embeddings}",
        f"#define MK_RMS_EPS {cfg.rms_norm_eps!r}f",
        f"#define MK_TIED {int(cfg.tie_word_embeddings)}",
        "",
        "// Tensor table indices: embed, then MK_TENSORS_PER_LAYER per layer, then the tail",
        "#define MK_T_EMBED 0",
        "#define MK_T_LAYER0 1",
        f"#define MK_TENSORS_PER_LAYER {len(LAYER_TENSORS)}",
    ]
    out += [f"#define MK_L_{t.upper()} {i}" for t, i in idx.items()]
    tail = 1 + n_layers * len(LAYER_TENSORS)
    out += [f"#define MK_T_FINAL_NORM {tail}", f"#define MK_T_ROPE_INV_FREQ {tail + 1}",
            f"#define MK_T_LM_HEAD {tail + 2}  // present only when MK_TIED == 0",
            f"#define MK_N_TENSORS {tail + 2 + (0 if cfg.tie_word_embeddings else 1)}",
            "static const char* const MK_LAYER_TENSOR_NAMES[MK_TENSORS_PER_LAYER] = {"
            + ", ".join(f'"{t}"' for t in LAYER_TENSORS) + "};", ""]
    for cname, fields in (("FlatHeader", HEADER_FIELDS), ("FlatTensorEntry", TENSOR_FIELDS)):
        out.append(f"typedef struct {cname} {{")
        out += [f"  {ctype};" for _, _, ctype in fields]
        out.append(f"}} {cname};")
    out += _c_layout_checks()
    return "\n".join(out) + "\n"


def default_config_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "src", "qwen3-0.6b.config.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emit-header", metavar="PATH", required=True)
    ap.add_argument("--config", default=default_config_path())
    args = ap.parse_args(argv)
    from .fsutil import write_text_atomic
    write_text_atomic(args.emit_header, emit_c_header(ModelConfig.from_file(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
