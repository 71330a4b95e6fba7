"""On-device sampling (sampling.cuh) against float64 softmax, and the text CLI, on the GPU.

The distribution tests hold the hidden state fixed (mk_set_lm_only: the launch skips the layers
and runs final norm + LM head + sampling at every step), draw 100,000 tokens, and compare the
counts with softmax(logits / T) after top-k / top-p, computed in float64 from the same weights,
by a chi-square test. Marked `gpu`.
"""
import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from megakernel.fixtures import write_random_flat
from megakernel.weight_loader import FlatFile

pytestmark = pytest.mark.gpu
DRAWS = 100_000
PER_LAUNCH = 25_000


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return write_random_flat(str(tmp_path_factory.mktemp("samp")), seed=int.from_bytes(os.urandom(2), "little"),
                             embed_std=0.05)


@pytest.fixture(scope="module")
def engine(flat):
    from megakernel.engine import Engine
    eng = Engine(flat, max_ctx=PER_LAUNCH + 8, quiet=True)
    yield eng
    eng.close()


def _logits64(flat, hidden):
    with FlatFile(flat, verify=False) as f:
        eps = f.config.rms_norm_eps
        head = (f.tensor("lm_head") if "lm_head" in f.entries else f.tensor("embed")).cuda().double()
        norm = f.tensor("final_norm").cuda().double()
    x = torch.from_numpy(hidden).cuda().double()
    x = x * torch.rsqrt(x.pow(2).mean() + eps) * norm
    return (head @ x).cpu().numpy()


def _reference(logits, T, top_k, top_p):
    z = logits / T
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-z, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    keep[order[: top_k if top_k > 0 else len(p)]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    if top_p < 1:  # HF: drop a token when the mass ranked above it already reaches top_p
        ps = p[order]
        above = np.concatenate(([0.0], np.cumsum(ps)[:-1]))
        drop = order[(above >= top_p) & (np.arange(len(ps)) > 0)]
        p[drop] = 0.0
        p /= p.sum()
    return p


def _temperature_for(logits, too_peaked):
    """Bisection on log T (a larger T flattens the distribution) to the edge of too_peaked(T)."""
    lo, hi = 1e-4, 1e4
    for _ in range(100):
        T = (lo * hi) ** 0.5
        lo, hi = (T, hi) if too_peaked(T) else (lo, T)
    return lo


def _max_prob(logits, T):
    z = logits / T
    return 1.0 / np.exp(z - z.max()).sum()


def _draw(engine, hidden, T, top_k, top_p, seed):
    lib, h = engine.lib, engine._handle()
    assert lib.mk_set_lm_only(h, hidden.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) == 0
    try:
        engine.set_eos([])
        out = []
        for i in range(DRAWS // PER_LAUNCH):
            engine.set_sampling(T, top_k, top_p, seed, rng_offset=i * PER_LAUNCH)
            out += engine.run([], 0, PER_LAUNCH, start_token=0)
    finally:
        lib.mk_set_lm_only(h, None)
        engine.set_sampling()
    return np.array(out)


@pytest.mark.parametrize("case", ["qwen-defaults", "top-p-only", "temperature-only"])
def test_sampled_frequencies_match_float64_softmax(flat, engine, case):
    from scipy.stats import chisquare
    rng = np.random.default_rng()
    hidden = rng.standard_normal(engine.config.hidden_size).astype(np.float32)
    logits = _logits64(flat, hidden)
    top_k, top_p = {"qwen-defaults": (20, 0.95), "top-p-only": (0, 0.9), "temperature-only": (0, 1.0)}[case]
    if case == "top-p-only":  # a nucleus of ~30 tokens: inside the 64 candidates, many bins
        T = _temperature_for(logits, lambda T: (_reference(logits, T, 0, top_p) > 0).sum() < 30)
        for _ in range(50):  # step off the edge: no token's cumulative mass within 1e-4 of top_p
            z = logits / T
            p = np.sort(np.exp(z - z.max()))[::-1]
            above = np.concatenate(([0.0], np.cumsum(p / p.sum())[:-1]))[:80]
            if np.abs(above - top_p).min() > 1e-4:
                break
            T *= 0.99
    else:  # the most likely token at 30% (top-k 20) or 5% (whole vocabulary)
        T = _temperature_for(logits, lambda T: _max_prob(logits, T) > (0.3 if top_k else 0.05))
    ref = _reference(logits, T, top_k, top_p)
    assert (ref > 0).sum() <= (64 if top_k == 0 and top_p < 1 else len(ref)), "nucleus beyond 64 candidates"
    draws = _draw(engine, hidden, T, top_k, top_p, seed=int(rng.integers(1 << 62)))
    counts = np.bincount(draws, minlength=len(ref)).astype(np.float64)
    assert counts[ref == 0].sum() == 0, f"{int(counts[ref == 0].sum())} draws outside the top-k / top-p support"
    exp = ref * len(draws)
    big = exp >= 5
    f_obs = np.append(counts[big], counts[~big].sum())
    f_exp = np.append(exp[big], exp[~big].sum())
    if f_exp[-1] < 5:  # fold a tiny pooled bin into the last big one
        f_obs, f_exp = np.append(f_obs[:-2], f_obs[-2:].sum()), np.append(f_exp[:-2], f_exp[-2:].sum())
    stat, pval = chisquare(f_obs, f_exp)
    assert big.sum() >= 5, "the distribution is too peaked for the test"
    assert pval >= 1e-3, f"chi-square {stat:.1f} over {len(f_obs)} bins, p = {pval:.2e} (T={T:.3g})"


def test_top_k_1_and_tiny_temperature_are_the_argmax(engine):
    prompt = list(range(50, 70))
    greedy = engine.generate(prompt, 24)
    assert engine.generate(prompt, 24, temperature=1.0, top_k=1, seed=1) == greedy
    assert engine.generate(prompt, 24, temperature=1e-6, seed=2) == greedy
    assert engine.generate(prompt, 24, temperature=1e-6, top_k=20, top_p=0.95, seed=3) == greedy


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (20, 0.95)])
def test_seed_reproduces_tokens_and_streaming_matches(engine, top_k, top_p):
    prompt = list(range(80, 100))
    kw = dict(temperature=1.5, top_k=top_k, top_p=top_p)
    a = engine.generate(prompt, 40, seed=11, **kw)
    assert engine.generate(prompt, 40, seed=11, **kw) == a
    assert engine.generate(prompt, 40, seed=12, **kw) != a
    streamed = [t for chunk in engine.generate_stream(prompt, 40, seed=11, **kw) for t in chunk]
    assert streamed == a


def test_cli_generate_and_chat_on_random_weights(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "megakernel.cli", "generate", "--random-weights", "--prompt",
                        "Hello, wörld", "--max-new-tokens", "12", "--seed", "5", "--json", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert 1 <= out["new_tokens"] <= 12 and out["ttft_ms"] > 0 and "gibberish" in r.stderr
    c = subprocess.run([sys.executable, "-m", "megakernel.cli", "chat", "--random-weights", "--max-new-tokens", "8",
                        "--quiet"], input="first turn\nsecond turn\n/reset\nthird\n/exit\n",
                       capture_output=True, text=True, env=env, timeout=600)
    assert c.returncode == 0, c.stderr
    turns = [l for l in c.stderr.splitlines() if "positions cached" in l]
    assert len(turns) == 3
    cached = [int(l.split(",")[-1].split()[0]) for l in turns]
    assert cached[1] > cached[0] and cached[2] < cached[1], "turn 2 keeps turn 1's cache; /reset clears it"
