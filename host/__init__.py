"""megakernel: a single persistent CUDA kernel for Qwen3 batch-1 decode, driven from Python.

Stages (one module each):
  config.py        ModelConfig read from a HuggingFace config.json
  layout.py        the flat weight file: header format and tensor order (defined once)
  weight_loader.py HF safetensors -> flat file, and the reader that maps it back
  reference.py     plain-PyTorch Qwen3 decoder, the truth every kernel is checked against
  fixtures.py      random checkpoints in the real HF layout (tests, --random-weights)
  launcher.py      nvcc build (cached) + ctypes binding of build/libmegakernel.so
  engine.py        Engine: weights on the GPU, KV cache, generate()
  validate.py      kernel vs reference, teacher-forced, per-step error report
  benchmark.py     tok/s against the memory-bandwidth roofline and PyTorch baselines
  reliability.py   determinism, soak, and the compute-sanitizer driver (GPU)
  cli.py           the `megakernel` command
"""

__version__ = "0.1.0"


class MegakernelError(Exception):
    """A user-facing error with a one-line message that names the problem and the fix."""
