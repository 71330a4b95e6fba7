"""HuggingFace Qwen3 checkpoint -> one flat binary file, and the reader that maps it back.

    python -m megakernel.weight_loader SNAPSHOT_DIR_OR_MODEL_ID OUT.bin

Input: a local HF snapshot folder (config.json + one or several *.safetensors,
with model.safetensors.index.json when sharded) or a hub model id, fetched with
huggingface_hub.snapshot_download (only config, generation config, tokenizer
and safetensors files).
Weights stored as float16 or float32 are converted to bfloat16 (round to
nearest even, as torch does); any other dtype is refused.
Output: the format of layout.py, written to a temp file then renamed, so a
failed conversion leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
import zlib

import numpy as np
import torch

from . import MegakernelError
from .config import ModelConfig
from .fsutil import atomic_output
from .layout import (DTYPE_BF16, DTYPE_F32, FORMAT_VERSION, HEADER_FIELDS, HEADER_STRUCT,
                     LAYER_TENSORS, MAGIC, NAME_BYTES, TENSOR_STRUCT, header_bytes,
                     plan_offsets, tensor_specs)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
HF_LAYER = "model.layers.{i}."
SNAPSHOT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors",
                     "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]


# --------------------------------------------------------------------------- snapshot

def resolve_snapshot(path_or_id: str, quiet: bool = False) -> str:
    """A local folder as is; otherwise a hub model id downloaded to the HF cache."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id) or path_or_id.startswith((".", "/")) or path_or_id.count("/") != 1:
        raise MegakernelError(f"{path_or_id}: not a snapshot folder and not a hub model id like "
                              "'Qwen/Qwen3-0.6B'; check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    (disable_progress_bars if quiet else enable_progress_bars)()
    try:
        return snapshot_download(path_or_id, allow_patterns=SNAPSHOT_PATTERNS)
    except Exception as e:  # network, auth, unknown repo: all end the same way for the user
        raise MegakernelError(f"{path_or_id}: download failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); check the model id and "
                              "the network, or pass a local snapshot folder") from None


def _safetensors_files(folder: str) -> list:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise MegakernelError(f"{folder}: no *.safetensors files; download the weights "
                              "(e.g. huggingface-cli download Qwen/Qwen3-0.6B)")
    paths = [os.path.join(folder, f) for f in files]
    for p in paths:
        if not os.path.isfile(p):
            raise MegakernelError(f"{p}: listed in model.safetensors.index.json but missing; "
                                  "re-download the snapshot")
        with open(p, "rb") as f:
            head = f.read(len(LFS_POINTER_PREFIX))
        if head == LFS_POINTER_PREFIX:
            raise MegakernelError(f"{p}: is a git-lfs pointer, not weights; run `git lfs pull` "
                                  "in the clone or download with huggingface_hub")
    return paths


class _TensorSource:
    """Lazy access to the HF tensors of all shards, with clear errors."""

    def __init__(self, folder: str):
        from safetensors import safe_open
        self.where, self.handles = {}, {}
        for p in _safetensors_files(folder):
            try:
                h = safe_open(p, framework="pt")
                keys = list(h.keys())
            except Exception as e:
                raise MegakernelError(f"{p}: corrupt or truncated safetensors file ({e}); "
                                      "re-download it") from None
            self.handles[p] = h
            for k in keys:
                self.where[k] = p

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple) -> torch.Tensor:
        if name not in self.where:
            raise MegakernelError(f"tensor {name} missing from the checkpoint "
                                  f"({len(self.where)} tensors found); re-download the snapshot")
        p = self.where[name]
        try:
            t = self.handles[p].get_tensor(name)
        except Exception as e:
            raise MegakernelError(f"{p}: tensor {name} unreadable, file truncated or corrupt "
                                  f"({e}); re-download it") from None
        if tuple(t.shape) != tuple(shape):
            raise MegakernelError(f"{p}: tensor {name} has shape {tuple(t.shape)}, expected "
                                  f"{tuple(shape)} from config.json; the weights and config disagree")
        if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise MegakernelError(f"{p}: tensor {name} has dtype {t.dtype}; only bf16, fp16 and "
                                  "fp32 checkpoints are supported (quantized ones are not)")
        return t.to(torch.bfloat16)


# --------------------------------------------------------------------------- fusion

def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Exactly HF's default RoPE inverse frequencies, float32, (head_dim/2,)."""
    d = cfg.head_dim
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))


def flat_tensors_from_hf(cfg: ModelConfig, get) -> dict:
    """Map HF tensors to the flat layout. `get(hf_name, shape)` returns a bf16 tensor.

    Yields tensors lazily (a dict of thunks) so conversion holds one layer at a time.
    """
    h, i_sz, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    out = {"embed": lambda: get("model.embed_tokens.weight", (cfg.vocab_size, h))}

    def layer(i, t):
        p = HF_LAYER.format(i=i)
        if t == "input_norm":
            return get(p + "input_layernorm.weight", (h,))
        if t == "post_norm":
            return get(p + "post_attention_layernorm.weight", (h,))
        if t == "q_norm":
            return get(p + "self_attn.q_norm.weight", (d,))
        if t == "k_norm":
            return get(p + "self_attn.k_norm.weight", (d,))
        if t == "wqkv":
            return torch.cat([get(p + "self_attn.q_proj.weight", (cfg.q_dim, h)),
                              get(p + "self_attn.k_proj.weight", (cfg.kv_dim, h)),
                              get(p + "self_attn.v_proj.weight", (cfg.kv_dim, h))], 0)
        if t == "wo":
            return get(p + "self_attn.o_proj.weight", (h, cfg.q_dim))
        if t == "wgu":  # interleave rows: gate0, up0, gate1, up1, ...
            g = get(p + "mlp.gate_proj.weight", (i_sz, h))
            u = get(p + "mlp.up_proj.weight", (i_sz, h))
            return torch.stack([g, u], 1).reshape(2 * i_sz, h)
        if t == "wdown":
            return get(p + "mlp.down_proj.weight", (h, i_sz))
        raise AssertionError(t)

    for i in range(cfg.num_hidden_layers):
        for t in LAYER_TENSORS:
            out[f"layers.{i}.{t}"] = (lambda i=i, t=t: layer(i, t))
    out["final_norm"] = lambda: get("model.norm.weight", (h,))
    out["rope_inv_freq"] = lambda: rope_inv_freq(cfg)
    if not cfg.tie_word_embeddings:
        out["lm_head"] = lambda: get("lm_head.weight", (cfg.vocab_size, h))
    return out


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_flat(cfg: ModelConfig, tensors: dict, out_path: str, progress: bool = False) -> str:
    """Write `tensors` (name -> tensor or thunk) in layout order to out_path, atomically."""
    specs = tensor_specs(cfg)
    offsets, payload = plan_offsets(specs)
    hbytes = header_bytes(len(specs))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=payload, unit="B", unit_scale=True, desc="convert")
    try:
        with atomic_output(out_path) as tmp, open(tmp, "wb") as f:
            f.write(bytes(hbytes))  # header written last, once the checksum is known
            crc, pos, table = 0, 0, []
            for spec, off in zip(specs, offsets):
                t = tensors[spec.name]
                t = t() if callable(t) else t
                want = torch.bfloat16 if spec.dtype == DTYPE_BF16 else torch.float32
                if tuple(t.shape) != spec.shape or t.dtype != want:
                    raise MegakernelError(f"tensor {spec.name}: got {tuple(t.shape)} {t.dtype}, "
                                          f"layout needs {spec.shape} {want}")
                pad = bytes(off - pos)
                data = _raw_bytes(t)
                for chunk in (pad, data):
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                pos = off + len(data)
                table.append(TENSOR_STRUCT.pack(spec.name.encode().ljust(NAME_BYTES, b"\0"),
                                                *(list(spec.shape) + [0] * (4 - len(spec.shape))),
                                                off, len(data), spec.dtype, len(spec.shape)))
                if bar:
                    bar.update(len(data) + len(pad))
            tail = bytes(payload - pos)
            f.write(tail)
            crc = zlib.crc32(tail, crc)
            values = dict(magic=MAGIC, header_bytes=hbytes, payload_bytes=payload,
                          version=FORMAT_VERSION, payload_crc32=crc, n_tensors=len(specs),
                          tie_word_embeddings=int(cfg.tie_word_embeddings))
            for name, _, _ in HEADER_FIELDS:
                if name not in values:
                    values[name] = getattr(cfg, name)
            f.seek(0)
            f.write(HEADER_STRUCT.pack(*(values[n] for n, _, _ in HEADER_FIELDS)))
            f.write(b"".join(table))
            f.flush()
            os.fsync(f.fileno())
    finally:
        if bar:
            bar.close()
    return out_path


def convert(path_or_id: str, out_path: str, progress: bool = False) -> str:
    """HF snapshot folder or model id -> flat file at out_path. Returns out_path."""
    folder = resolve_snapshot(path_or_id, quiet=not progress)
    cfg = ModelConfig.from_file(folder)
    src = _TensorSource(folder)
    return write_flat(cfg, flat_tensors_from_hf(cfg, src.get), out_path, progress=progress)


# --------------------------------------------------------------------------- reader

class FlatFile:
    """A flat file mapped read-only; tensors come back as torch views of the mapping."""

    def __init__(self, path: str, verify: bool = True):
        self.path = path
        if not os.path.isfile(path):
            raise MegakernelError(f"{path}: flat weight file not found; create it with "
                                  "`megakernel convert MODEL OUT.bin`")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_STRUCT.size)
            if len(head) < HEADER_STRUCT.size or head[:8] != MAGIC:
                raise MegakernelError(f"{path}: wrong magic, not a megakernel flat file; "
                                      "convert the checkpoint with `megakernel convert`")
            h = dict(zip([n for n, _, _ in HEADER_FIELDS], HEADER_STRUCT.unpack(head)))
            if h["version"] != FORMAT_VERSION:
                raise MegakernelError(f"{path}: format version {h['version']}, this build reads "
                                      f"version {FORMAT_VERSION}; re-convert the checkpoint")
            if size != h["header_bytes"] + h["payload_bytes"]:
                raise MegakernelError(f"{path}: size {size} bytes, header says "
                                      f"{h['header_bytes'] + h['payload_bytes']}; the file is "
                                      "truncated or damaged, re-convert it")
            table = f.read(h["n_tensors"] * TENSOR_STRUCT.size)
        self.header = h
        self.config = ModelConfig.from_dict(
            {"architectures": ["Qwen3ForCausalLM"], **{k: h[k] for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                "rms_norm_eps", "max_position_embeddings")},
             "tie_word_embeddings": bool(h["tie_word_embeddings"])}, source=path)
        self.entries = {}
        for k in range(h["n_tensors"]):
            name, *rest = TENSOR_STRUCT.unpack_from(table, k * TENSOR_STRUCT.size)
            s0, s1, s2, s3, off, nbytes, dtype, ndim = rest
            if off + nbytes > h["payload_bytes"] or dtype not in (DTYPE_BF16, DTYPE_F32) or ndim > 4:
                raise MegakernelError(f"{path}: tensor table entry {k} is damaged; re-convert the checkpoint")
            self.entries[name.rstrip(b"\0").decode(errors="replace")] = (off, nbytes, dtype, (s0, s1, s2, s3)[:ndim])
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        if verify:
            crc = zlib.crc32(self._map[h["header_bytes"]:])
            if crc != h["payload_crc32"]:
                raise MegakernelError(f"{path}: checksum mismatch (payload crc32 {crc:#010x}, "
                                      f"header {h['payload_crc32']:#010x}); the file is corrupt, "
                                      "re-convert it")

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise MegakernelError(f"{self.path}: no tensor {name!r} in the flat file")
        off, nbytes, dtype, shape = self.entries[name]
        start = self.header["header_bytes"] + off
        np_dtype = np.int16 if dtype == DTYPE_BF16 else np.float32
        arr = self._map[start:start + nbytes].view(np_dtype).reshape(shape)
        with warnings.catch_warnings():  # read-only mapping: callers clone before writing
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if dtype == DTYPE_BF16 else t

    def to_hf_state_dict(self) -> dict:
        """Undo the fusions: HF parameter names -> tensors (copies), for the reference model."""
        cfg, sd = self.config, {}
        sd["model.embed_tokens.weight"] = self.tensor("embed").clone()
        for i in range(cfg.num_hidden_layers):
            p, f = HF_LAYER.format(i=i), f"layers.{i}."
            sd[p + "input_layernorm.weight"] = self.tensor(f + "input_norm").clone()
            sd[p + "post_attention_layernorm.weight"] = self.tensor(f + "post_norm").clone()
            sd[p + "self_attn.q_norm.weight"] = self.tensor(f + "q_norm").clone()
            sd[p + "self_attn.k_norm.weight"] = self.tensor(f + "k_norm").clone()
            q, k, v = self.tensor(f + "wqkv").split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim], 0)
            sd[p + "self_attn.q_proj.weight"] = q.clone()
            sd[p + "self_attn.k_proj.weight"] = k.clone()
            sd[p + "self_attn.v_proj.weight"] = v.clone()
            sd[p + "self_attn.o_proj.weight"] = self.tensor(f + "wo").clone()
            gu = self.tensor(f + "wgu").reshape(cfg.intermediate_size, 2, cfg.hidden_size)
            sd[p + "mlp.gate_proj.weight"] = gu[:, 0].clone()
            sd[p + "mlp.up_proj.weight"] = gu[:, 1].clone()
            sd[p + "mlp.down_proj.weight"] = self.tensor(f + "wdown").clone()
        sd["model.norm.weight"] = self.tensor("final_norm").clone()
        if not cfg.tie_word_embeddings:
            sd["lm_head.weight"] = self.tensor("lm_head").clone()
        return sd

    def close(self):
        self._map = None  # the mapping goes once the last tensor view is gone

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Convert a HF Qwen3 checkpoint to a flat file")
    ap.add_argument("model", help="snapshot folder or hub id (e.g. Qwen/Qwen3-0.6B)")
    ap.add_argument("out", help="output .bin path")
    args = ap.parse_args(argv)
    try:
        convert(args.model, args.out, progress=True)
    except MegakernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
