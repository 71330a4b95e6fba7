"""Random Qwen3 checkpoints in the real HuggingFace layout, for tests and --random-weights.

    write_random_checkpoint(folder, config_dict, seed=0, shards=1, lm_head=None)

writes config.json, generation_config.json and model.safetensors (or N shards
plus model.safetensors.index.json), with HF tensor names and [out, in] bf16
weights, so every consumer runs the same loading code as a real download.
"""
from __future__ import annotations

import json
import os

import torch

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def _load(name: str) -> dict:
    with open(os.path.join(_SRC, name)) as f:
        return json.load(f)


def qwen3_06b_config() -> dict:
    """The published Qwen3-0.6B config.json (src/ keeps a copy of ../shared/qwen3-0.6b/)."""
    return _load("qwen3-0.6b.config.json")


def qwen3_06b_generation_config() -> dict:
    return _load("qwen3-0.6b.generation_config.json")


def tiny_config(tied: bool = True, **overrides) -> dict:
    """A small Qwen3 config with every feature of the real one (GQA, q/k norm, RoPE)."""
    cfg = qwen3_06b_config()
    cfg.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_window_layers=2,
               max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=tied)
    cfg.update(overrides)
    return cfg


def random_hf_state_dict(cfg: dict, seed: int = 0, weight_std: float = 0.02,
                         embed_std: float = 0.02, lm_head: bool | None = None,
                         dtype=torch.bfloat16) -> dict:
    """HF-named random tensors for `cfg`. lm_head: include lm_head.weight (default: iff untied)."""
    g = torch.Generator().manual_seed(seed)
    h, i_sz, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qd, kvd = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def norm_weight(n):  # around 1, like trained norms, but not exactly 1
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    sd = {"model.embed_tokens.weight": randn(cfg["vocab_size"], h, std=embed_std)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_weight(h)
        sd[p + "post_attention_layernorm.weight"] = norm_weight(h)
        sd[p + "self_attn.q_proj.weight"] = randn(qd, h, std=weight_std)
        sd[p + "self_attn.k_proj.weight"] = randn(kvd, h, std=weight_std)
        sd[p + "self_attn.v_proj.weight"] = randn(kvd, h, std=weight_std)
        sd[p + "self_attn.o_proj.weight"] = randn(h, qd, std=weight_std)
        sd[p + "self_attn.q_norm.weight"] = norm_weight(d)
        sd[p + "self_attn.k_norm.weight"] = norm_weight(d)
        sd[p + "mlp.gate_proj.weight"] = randn(i_sz, h, std=weight_std)
        sd[p + "mlp.up_proj.weight"] = randn(i_sz, h, std=weight_std)
        sd[p + "mlp.down_proj.weight"] = randn(h, i_sz, std=weight_std)
    sd["model.norm.weight"] = norm_weight(h)
    if lm_head is None:
        lm_head = not cfg["tie_word_embeddings"]
    if lm_head:
        sd["lm_head.weight"] = (sd["model.embed_tokens.weight"].clone() if cfg["tie_word_embeddings"]
                                else randn(cfg["vocab_size"], h, std=embed_std))
    return sd


# A ChatML template with Qwen3's thinking switch, written here for the synthetic tokenizer (a
# real snapshot brings its own in tokenizer_config.json).
CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if message.role == 'assistant' %}\n"
    "{%- set content = message.content %}\n"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}\n"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}\n"
    "{%- endif %}\n")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
QWEN_SPECIAL_IDS = [151643, 151644, 151645, 151667, 151668]


def write_random_tokenizer(folder: str, vocab_size: int) -> dict:
    """A byte-level tokenizer.json covering every id of the vocabulary (bytes, then 2- and 3-byte
    strings), the special tokens at Qwen3's ids when the vocabulary holds them (else at its top),
    tokenizer_config.json with CHAT_TEMPLATE. Returns {special token: id}."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    ids = QWEN_SPECIAL_IDS if vocab_size > max(QWEN_SPECIAL_IDS) else list(range(vocab_size - 5, vocab_size))
    specials = dict(zip(SPECIAL_TOKENS, ids))
    vocab, taken = {}, set(ids)
    n = 0
    for i in range(vocab_size):
        if i in taken:
            continue
        digits, k = [], n  # token n: its base-256 digits as byte symbols (1, 2, then 3 symbols)
        k2 = k - 256 if k >= 256 else None
        if k < 256:
            digits = [k]
        elif k2 < 256 * 256:
            digits = [k2 // 256, k2 % 256]
        else:
            k3 = k2 - 256 * 256
            digits = [k3 // 65536 % 256, k3 // 256 % 256, k3 % 256]
        vocab["".join(alphabet[d] for d in digits)] = i
        n += 1
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE,
                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                   "model_max_length": 40960}, f, indent=2)
    return specials


def write_random_checkpoint(folder: str, cfg: dict | None = None, seed: int = 0, shards: int = 1,
                            lm_head: bool | None = None, weight_std: float = 0.02,
                            embed_std: float = 0.02, dtype=torch.bfloat16) -> str:
    """Write a random checkpoint of `cfg` (default: the real Qwen3-0.6B shapes) to folder."""
    from safetensors.torch import save_file
    cfg = qwen3_06b_config() if cfg is None else cfg
    os.makedirs(folder, exist_ok=True)
    sd = random_hf_state_dict(cfg, seed, weight_std, embed_std, lm_head, dtype)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    specials = write_random_tokenizer(folder, cfg["vocab_size"])
    gen = qwen3_06b_generation_config()
    gen.update(eos_token_id=[specials["<|im_end|>"], specials["<|endoftext|>"]],
               bos_token_id=specials["<|endoftext|>"], pad_token_id=specials["<|endoftext|>"])
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    names = list(sd)
    if shards <= 1:
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map, per = {}, -(-len(names) // shards)
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return folder


def write_random_flat(folder: str, cfg: dict | None = None, seed: int = 0, **kw) -> str:
    """A random checkpoint (write_random_checkpoint, same keywords) converted to folder/w.bin by
    the user's path (weight_loader.convert). Returns the flat file's path."""
    from .weight_loader import convert
    ck = write_random_checkpoint(os.path.join(folder, "ck"), cfg, seed=seed, **kw)
    return convert(ck, os.path.join(folder, "w.bin"))


def patch_flat_header(path: str, **fields) -> str:
    """Rewrites header fields of a flat file in place (tests of refused files); returns path."""
    from .layout import HEADER_FIELDS, HEADER_STRUCT
    names = [n for n, _, _ in HEADER_FIELDS]
    with open(path, "r+b") as f:
        values = list(HEADER_STRUCT.unpack(f.read(HEADER_STRUCT.size)))
        for k, v in fields.items():
            values[names.index(k)] = v
        f.seek(0)
        f.write(HEADER_STRUCT.pack(*values))
    return path
