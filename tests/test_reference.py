"""host/reference.py against HF transformers' Qwen3ForCausalLM, float32, on tiny random configs."""
import pytest
import torch

from megakernel.config import ModelConfig
from megakernel.fixtures import random_hf_state_dict, tiny_config
from megakernel.reference import Qwen3Reference

transformers = pytest.importorskip("transformers")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def hf_model(cfg_dict, sd):
    hf_cfg = transformers.Qwen3Config(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    hf_cfg._attn_implementation = "eager"
    m = transformers.Qwen3ForCausalLM(hf_cfg).float().eval()
    missing, unexpected = m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if cfg_dict["tie_word_embeddings"]:
        m.tie_weights()
    return m


@pytest.mark.parametrize("tied,lm_head_present", [(True, False), (True, True), (False, True)])
def test_prefill_and_decode_match_transformers(tied, lm_head_present):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    cfg_dict = tiny_config(tied=tied)
    sd = random_hf_state_dict(cfg_dict, seed=seed, weight_std=0.05, embed_std=0.5,
                              lm_head=lm_head_present, dtype=torch.float32)
    cfg = ModelConfig.from_dict(cfg_dict)
    ref = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.float32, max_ctx=64)
    hf = hf_model(cfg_dict, sd)

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (11,), generator=g)
    with torch.no_grad():
        out = hf(prompt[None], use_cache=True)
    ours = ref(prompt, start_pos=0)
    assert rel_err(ours, out.logits[0]) <= 1e-5
    past, pos = out.past_key_values, prompt.numel()
    for step in range(16):
        tok = torch.randint(0, cfg.vocab_size, (1,), generator=g)
        with torch.no_grad():
            out = hf(tok[None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        ours = ref(tok, start_pos=pos)
        pos += 1
        err = rel_err(ours, out.logits[0])
        assert err <= 1e-5, f"decode step {step}: relative error {err:.2e}"


def test_untied_lm_head_is_used():
    """With an untied head, changing lm_head.weight must change the logits (and only via it)."""
    cfg_dict = tiny_config(tied=False)
    sd = random_hf_state_dict(cfg_dict, seed=3, dtype=torch.float32)
    cfg = ModelConfig.from_dict(cfg_dict)
    tok = torch.tensor([5, 7])
    a = Qwen3Reference.from_state_dict(cfg, sd)(tok, 0)
    sd2 = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] * 2})
    b = Qwen3Reference.from_state_dict(cfg, sd2)(tok, 0)
    assert torch.allclose(b, 2 * a, rtol=1e-5, atol=1e-6)


def test_bf16_mode_close_to_float32():
    cfg_dict = tiny_config()
    sd = random_hf_state_dict(cfg_dict, seed=4, weight_std=0.05, embed_std=0.5)
    cfg = ModelConfig.from_dict(cfg_dict)
    tok = torch.randint(0, cfg.vocab_size, (6,))
    f32 = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.float32)(tok, 0)
    bf16 = Qwen3Reference.from_state_dict(cfg, sd, dtype=torch.bfloat16)(tok, 0)
    err = rel_err(bf16, f32)
    assert 0 < err < 3e-2


def test_context_overflow_refused():
    cfg_dict = tiny_config()
    cfg = ModelConfig.from_dict(cfg_dict)
    ref = Qwen3Reference.from_state_dict(cfg, random_hf_state_dict(cfg_dict), max_ctx=4)
    with pytest.raises(ValueError, match="max_ctx=4"):
        ref(torch.tensor([1, 2, 3, 4, 5]), 0)
