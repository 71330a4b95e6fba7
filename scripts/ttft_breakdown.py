"""Where the time to first token goes (GPU): bulk prefill, the first kernel launch, host work.

    python3 scripts/ttft_breakdown.py [WEIGHTS.bin]     (default: a random checkpoint of the real shapes)
"""
import random
import statistics
import sys
import tempfile
import time

import torch

from megakernel.engine import Engine
from megakernel.fixtures import write_random_flat

with tempfile.TemporaryDirectory() as tmp:
    flat = sys.argv[1] if len(sys.argv) > 1 else write_random_flat(tmp, seed=3)
    with Engine(flat, max_ctx=2048, quiet=True) as eng:
        rng = random.Random(0)
        for n in (16, 1024):
            prompt = [rng.randrange(eng.config.vocab_size) for _ in range(n)]
            pf = eng.prefiller
            rows = {"ttft": [], "prefill": [], "launch": [], "kernel": []}
            for rep in range(12):
                rows["ttft"].append(eng.time_to_first_token(prompt)[1])
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                pf(prompt[:-1], 0)
                t1 = time.perf_counter()
                eng.run(prompt[-1:], n - 1, 1)
                t2 = time.perf_counter()
                rows["prefill"].append((t1 - t0) * 1e3)
                rows["launch"].append((t2 - t1) * 1e3)
                rows["kernel"].append(eng.last_ms())
            med = {k: statistics.median(v[2:]) for k, v in rows.items()}
            print(f"{n:5d} tokens: TTFT {med['ttft']:.3f} ms = prefill {med['prefill']:.3f} + first step "
                  f"{med['launch']:.3f} (kernel {med['kernel']:.3f} between its events)")
