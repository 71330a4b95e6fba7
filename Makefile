# Build the Qwen3 megakernel.
#   make                 standalone harness build/megakernel (GPU arch auto-detected; ARCH=sm_80 overrides)
#   make lib             build/libmegakernel.so for host/launcher.py (ctypes)
#   make all-arch        the library for sm_75 sm_80 sm_86 sm_89 sm_90, and sm_100 sm_120 where
#                        this nvcc knows them (CI compiles these)
#   make ptx-arch        PTX-only libraries for compute_75 / compute_80 (JIT by the driver)
#   make test            the test suite (GPU tests skip without a GPU)
#   make layout          regenerate src/generated_layout.h from host/layout.py
#   make clean
NVCC ?= nvcc
PYTHON ?= python3
DETECTED := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.[:space:]')
ARCH ?= $(if $(DETECTED),sm_$(DETECTED),sm_90)
ARCHS := sm_75 sm_80 sm_86 sm_89 sm_90
# Newer targets this nvcc knows (nvcc 13: Blackwell sm_100, sm_120) are compiled by all-arch too.
NEWER_ARCHS := $(filter sm_100 sm_120,$(patsubst compute_%,sm_%,$(shell $(NVCC) --list-gpu-arch 2>/dev/null)))
NVCCFLAGS ?= -O3 -std=c++17 -lineinfo -Xptxas -v -Isrc
SOURCES := $(wildcard src/*.cu src/*.cuh src/*.h)

.PHONY: all lib all-arch ptx-arch test clean layout
all: build/megakernel
lib: build/libmegakernel.so

build/megakernel: $(SOURCES)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -arch=$(ARCH) -DMK_STANDALONE -o $@ src/megakernel.cu

build/libmegakernel.so: $(SOURCES)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -arch=$(ARCH) -shared -Xcompiler -fPIC -o $@ src/megakernel.cu

build/libmegakernel_%.so: $(SOURCES)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -arch=$* -shared -Xcompiler -fPIC -o $@ src/megakernel.cu

all-arch: $(foreach a,$(ARCHS) $(NEWER_ARCHS),build/libmegakernel_$(a).so)

build/libmegakernel_ptx%.so: $(SOURCES)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -gencode=arch=compute_$*,code=compute_$* -shared -Xcompiler -fPIC -o $@ src/megakernel.cu

ptx-arch: build/libmegakernel_ptx75.so build/libmegakernel_ptx80.so

test:
	$(PYTHON) -m pytest -q

layout:
	$(PYTHON) -m megakernel.layout --emit-header src/generated_layout.h --config src/qwen3-0.6b.config.json

clean:
	rm -rf build
