"""The CUDA kernels one bulk prefill launches (GPU), by name: what a prompt's prefill is made of.

    python3 scripts/prefill_kernels.py [WEIGHTS.bin] [TOKENS]     (default: random real-shape weights, 15)
"""
import collections
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from megakernel.engine import Engine
from megakernel.fixtures import write_random_flat

with tempfile.TemporaryDirectory() as tmp:
    flat = sys.argv[1] if len(sys.argv) > 1 else write_random_flat(tmp, seed=3)
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with Engine(flat, max_ctx=2048, quiet=True) as eng:
        pf = eng.prefiller
        pf._forward(torch.arange(T, device="cuda"), 0)  # warm-up (cuBLAS handles, kernels), eager
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            pf._forward(torch.arange(T, device="cuda"), 0)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        names = collections.Counter(e.name[:90] for e in kernels)
        layers = eng.config.num_hidden_layers
        print(f"{len(kernels)} CUDA kernels for a {T}-token prefill ({len(kernels) / layers:.1f} per layer); "
              f"float32-output GEMMs: {pf._fp32_out}, in place: {pf._addmm_inplace}, fused kernels: {pf._ops is not None}")
        for name, c in names.most_common(40):
            print(f"{c:5d}  {name}")
