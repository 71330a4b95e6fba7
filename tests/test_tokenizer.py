"""Tokenizer, chat template and incremental decoding against HF transformers (CPU, no download).

The tokenizer.json and chat template are built by fixtures.write_random_tokenizer (byte-level,
special tokens at Qwen3's ids); transformers loads the same files, so both sides see one input.
"""
import json
import random

import pytest

from megakernel.fixtures import qwen3_06b_generation_config, write_random_tokenizer
from megakernel.tokenizer import StreamDecoder, Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    specials = write_random_tokenizer(str(d), 151936)
    with open(d / "generation_config.json", "w") as f:
        json.dump(qwen3_06b_generation_config(), f)
    return str(d), specials


def _random_text(rng, n):
    pool = "abc xyz 123 .,!?\n\t éüß 你好世界 🙂🚀 Ωπ <|im_end|> </think>"
    return "".join(rng.choice(pool) for _ in range(n))


def _conversations(rng):
    for _ in range(6):
        msgs = []
        if rng.random() < 0.5:
            msgs.append({"role": "system", "content": _random_text(rng, 20)})
        for t in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": _random_text(rng, 30)})
            if t or rng.random() < 0.5:
                think = f"<think>\n{_random_text(rng, 10)}\n</think>\n\n" if rng.random() < 0.5 else ""
                msgs.append({"role": "assistant", "content": think + _random_text(rng, 25)})
        if msgs[-1]["role"] == "assistant":
            msgs.append({"role": "user", "content": _random_text(rng, 15)})
        yield msgs


def test_chat_template_matches_transformers(snap):
    folder, _ = snap
    ours = Tokenizer.from_snapshot(folder)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    rng = random.Random()
    for msgs in _conversations(rng):
        for thinking in (True, False):
            for gen in (True, False):
                want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                              enable_thinking=thinking)
                got = ours.apply_chat_template(msgs, add_generation_prompt=gen, enable_thinking=thinking)
                assert got == want
                assert ours.encode(got) == hf.encode(want, add_special_tokens=False)


def test_encode_decode_round_trip(snap):
    tok = Tokenizer.from_snapshot(snap[0])
    rng = random.Random()
    for _ in range(20):
        text = _random_text(rng, rng.randint(1, 80))
        ids = tok.encode(text)
        assert all(0 <= i < 151936 for i in ids)
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_stream_decoder_never_splits_characters(snap):
    tok = Tokenizer.from_snapshot(snap[0])
    rng = random.Random()
    text = _random_text(rng, 200).replace("<|im_end|>", "")
    ids = tok.encode(text)
    dec, pieces = StreamDecoder(tok), []
    i = 0
    while i < len(ids):  # chunks of 1..3 ids, as the engine's launches deliver them
        n = rng.randint(1, 3)
        pieces.append(dec.push(ids[i:i + n]))
        i += n
    pieces.append(dec.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)
    assert any(len(p.encode()) > len(p) for p in pieces), "the text had multi-byte characters"


def test_generation_config_gives_eos_and_defaults(snap):
    folder, specials = snap
    tok = Tokenizer.from_snapshot(folder)
    assert tok.eos_ids == [specials["<|im_end|>"], specials["<|endoftext|>"]]
    assert tok.generation_defaults["temperature"] == 0.6 and tok.generation_defaults["top_k"] == 20
    assert tok.generation_defaults["top_p"] == 0.95


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    from megakernel import MegakernelError
    with pytest.raises(MegakernelError, match="no tokenizer.json"):
        Tokenizer.from_snapshot(str(tmp_path))
