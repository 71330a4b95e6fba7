"""HF checkpoint -> flat file -> back: bit-exact round trips, and every bad input refused."""
import json
import os

import pytest
import torch

from megakernel import MegakernelError
from megakernel.config import ModelConfig
from megakernel.fixtures import (patch_flat_header, qwen3_06b_config, random_hf_state_dict, tiny_config,
                                 write_random_checkpoint)
from megakernel.layout import HEADER_STRUCT, emit_c_header, tensor_specs
from megakernel.reference import Qwen3Reference
from megakernel.weight_loader import FlatFile, convert

REPO = os.path.join(os.path.dirname(__file__), "..")


def bits(t):
    return t.contiguous().view(torch.int16) if t.dtype == torch.bfloat16 else t.contiguous().view(torch.int32)


def assert_round_trip(folder, out):
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(folder, f)))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    with FlatFile(out) as flat:
        back = flat.to_hf_state_dict()
        expect = {k: v for k, v in sd.items() if not (k == "lm_head.weight" and cfg["tie_word_embeddings"])}
        assert set(back) == set(expect)
        for k, v in expect.items():
            assert back[k].dtype == torch.bfloat16
            assert torch.equal(bits(back[k]), bits(v.to(torch.bfloat16))), k
        assert flat.config == ModelConfig.from_dict(cfg)
    return sd


@pytest.mark.parametrize("tied,lm_head,shards", [(True, False, 1), (True, True, 3), (False, None, 2)])
def test_round_trip_tiny(tmp_path, tied, lm_head, shards):
    ck = write_random_checkpoint(str(tmp_path / "ck"), tiny_config(tied=tied),
                                 seed=int(torch.randint(0, 10**6, ()).item()), shards=shards, lm_head=lm_head)
    out = convert(ck, str(tmp_path / "w.bin"))
    assert_round_trip(ck, out)
    assert os.listdir(tmp_path) == ["ck", "w.bin"] or sorted(os.listdir(tmp_path)) == ["ck", "w.bin"]


def test_fused_layout_is_what_the_kernel_reads(tmp_path):
    """The flat tensors against the original checkpoint, not against the reader's own inverse."""
    from safetensors.torch import load_file
    cfg_d = tiny_config()
    ck = write_random_checkpoint(str(tmp_path / "ck"), cfg_d, seed=11)
    hf = load_file(os.path.join(ck, "model.safetensors"))
    d = cfg_d["head_dim"]
    qd, kvd = cfg_d["num_attention_heads"] * d, cfg_d["num_key_value_heads"] * d
    with FlatFile(convert(ck, str(tmp_path / "w.bin"))) as flat:
        for i in range(cfg_d["num_hidden_layers"]):
            p = f"model.layers.{i}."
            wgu, wqkv = flat.tensor(f"layers.{i}.wgu"), flat.tensor(f"layers.{i}.wqkv")
            assert torch.equal(bits(wgu[0::2]), bits(hf[p + "mlp.gate_proj.weight"]))
            assert torch.equal(bits(wgu[1::2]), bits(hf[p + "mlp.up_proj.weight"]))
            assert torch.equal(bits(wqkv[:qd]), bits(hf[p + "self_attn.q_proj.weight"]))
            assert torch.equal(bits(wqkv[qd:qd + kvd]), bits(hf[p + "self_attn.k_proj.weight"]))
            assert torch.equal(bits(wqkv[qd + kvd:]), bits(hf[p + "self_attn.v_proj.weight"]))
            assert torch.equal(bits(flat.tensor(f"layers.{i}.wdown")), bits(hf[p + "mlp.down_proj.weight"]))
        assert torch.equal(bits(flat.tensor("embed")), bits(hf["model.embed_tokens.weight"]))
        inv = 1.0 / (cfg_d["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        assert torch.equal(flat.tensor("rope_inv_freq"), inv)
        order = [flat.entries[s.name][0] for s in tensor_specs(flat.config)]
        assert order == sorted(order) and all(o % 256 == 0 for o in order)


def test_flat_damaged_table_entry(flat):
    from megakernel.layout import TENSOR_STRUCT
    data = bytearray(open(flat, "rb").read())
    off = HEADER_STRUCT.size + 3 * TENSOR_STRUCT.size + 48 + 32  # entry 3's offset field
    data[off:off + 8] = (1 << 40).to_bytes(8, "little")
    open(flat, "wb").write(bytes(data))
    expect_error(lambda: FlatFile(flat, verify=False), "table entry 3", "re-convert")


def test_reference_runs_from_flat_file(tmp_path):
    cfg_d = tiny_config()
    sd = random_hf_state_dict(cfg_d, seed=5, embed_std=0.5)
    ck = write_random_checkpoint(str(tmp_path / "ck"), cfg_d, seed=5, embed_std=0.5)
    with FlatFile(convert(ck, str(tmp_path / "w.bin"))) as flat:
        ref_flat = Qwen3Reference.from_state_dict(flat.config, flat.to_hf_state_dict())
    ref_hf = Qwen3Reference.from_state_dict(ModelConfig.from_dict(cfg_d), sd)
    tok = torch.randint(0, cfg_d["vocab_size"], (5,))
    assert torch.equal(ref_flat(tok, 0), ref_hf(tok, 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_fp32_checkpoints_converted_to_bf16(tmp_path, dtype):
    cfg_d = tiny_config()
    ck = write_random_checkpoint(str(tmp_path / "ck"), cfg_d, seed=6, dtype=dtype)
    assert_round_trip(ck, convert(ck, str(tmp_path / "w.bin")))


@pytest.mark.slow
def test_round_trip_full_qwen3_06b_shapes(tmp_path):
    ck = write_random_checkpoint(str(tmp_path / "ck"), qwen3_06b_config(), seed=1)
    out = convert(ck, str(tmp_path / "w.bin"))
    assert os.path.getsize(out) > 1_190_000_000
    assert_round_trip(ck, out)


def test_generated_c_header_is_current():
    cfg = ModelConfig.from_file(os.path.join(REPO, "src", "qwen3-0.6b.config.json"))
    with open(os.path.join(REPO, "src", "generated_layout.h")) as f:
        assert f.read() == emit_c_header(cfg), "run: python -m megakernel.layout --emit-header src/generated_layout.h"


def test_committed_config_is_the_shared_one():
    shared = os.path.join(REPO, "..", "shared", "qwen3-0.6b", "config.json")
    if not os.path.exists(shared):
        pytest.skip("../shared not present")
    assert json.load(open(shared)) == qwen3_06b_config()
    gen = os.path.join(REPO, "..", "shared", "qwen3-0.6b", "generation_config.json")
    assert json.load(open(gen)) == json.load(open(os.path.join(REPO, "src", "qwen3-0.6b.generation_config.json")))


# ----------------------------------------------------------------------------- bad input

def expect_error(fn, *fragments):
    with pytest.raises(MegakernelError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def no_leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".")] == []  # temp files are hidden


@pytest.fixture
def tiny_ck(tmp_path):
    return write_random_checkpoint(str(tmp_path / "ck"), tiny_config(), seed=2)


def test_missing_config(tmp_path, tiny_ck):
    os.unlink(os.path.join(tiny_ck, "config.json"))
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "config.json not found")
    assert not os.path.exists(tmp_path / "w.bin")


def test_not_qwen3(tmp_path, tiny_ck):
    p = os.path.join(tiny_ck, "config.json")
    d = json.load(open(p))
    d["architectures"] = ["LlamaForCausalLM"]
    json.dump(d, open(p, "w"))
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "LlamaForCausalLM", "Qwen3ForCausalLM")


def _rewrite(folder, fn):
    from safetensors.torch import load_file, save_file
    p = os.path.join(folder, "model.safetensors")
    sd = load_file(p)
    fn(sd)
    save_file(sd, p)


def test_missing_tensor(tmp_path, tiny_ck):
    _rewrite(tiny_ck, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "model.layers.1.mlp.up_proj.weight", "missing")
    assert not os.path.exists(tmp_path / "w.bin") and no_leftovers(tmp_path)


def test_wrong_shape(tmp_path, tiny_ck):
    def f(sd):
        sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"][:-1].clone()
    _rewrite(tiny_ck, f)
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "k_proj.weight", "shape")
    assert not os.path.exists(tmp_path / "w.bin") and no_leftovers(tmp_path)


def test_wrong_dtype(tmp_path, tiny_ck):
    def f(sd):
        sd["model.norm.weight"] = torch.ones_like(sd["model.norm.weight"], dtype=torch.int8)
    _rewrite(tiny_ck, f)
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "model.norm.weight", "dtype")
    assert not os.path.exists(tmp_path / "w.bin") and no_leftovers(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors(tmp_path, tiny_ck, keep):
    p = os.path.join(tiny_ck, "model.safetensors")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: int(len(data) * keep)])
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "model.safetensors")
    assert not os.path.exists(tmp_path / "w.bin") and no_leftovers(tmp_path)


def test_corrupt_safetensors_header(tmp_path, tiny_ck):
    p = os.path.join(tiny_ck, "model.safetensors")
    data = bytearray(open(p, "rb").read())
    data[8:40] = b"#" * 32
    open(p, "wb").write(bytes(data))
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "corrupt")


def test_git_lfs_pointer(tmp_path, tiny_ck):
    p = os.path.join(tiny_ck, "model.safetensors")
    open(p, "w").write("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    expect_error(lambda: convert(tiny_ck, str(tmp_path / "w.bin")), "git-lfs", "git lfs pull")


def test_unknown_path(tmp_path):
    expect_error(lambda: convert(str(tmp_path / "nope"), str(tmp_path / "w.bin")), "nope")


@pytest.fixture
def flat(tmp_path, tiny_ck):
    return convert(tiny_ck, str(tmp_path / "w.bin"))


def test_flat_wrong_magic(flat):
    patch_flat_header(flat, magic=b"GGUF\0\0\0\0")
    expect_error(lambda: FlatFile(flat), "wrong magic", "megakernel convert")


def test_flat_wrong_version(flat):
    patch_flat_header(flat, version=99)
    expect_error(lambda: FlatFile(flat), "version 99", "re-convert")


def test_flat_wrong_size(flat):
    data = open(flat, "rb").read()
    open(flat, "wb").write(data[:-100])
    expect_error(lambda: FlatFile(flat), "truncated")


def test_flat_checksum_mismatch(flat):
    data = bytearray(open(flat, "rb").read())
    data[-1000] ^= 0x40
    open(flat, "wb").write(bytes(data))
    expect_error(lambda: FlatFile(flat), "checksum mismatch")
    FlatFile(flat, verify=False).close()  # opt-out reads it anyway


def test_flat_missing(tmp_path):
    expect_error(lambda: FlatFile(str(tmp_path / "none.bin")), "not found", "megakernel convert")
