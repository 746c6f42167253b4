SHELL := /bin/bash
# empo.c build. `make` builds train_empo; `make test` builds and runs every test binary and ends
# with one line "N passed, N failed"; `make bench` runs the CPU benchmarks; `make fixtures`
# regenerates the committed reference fixtures (needs Python + PyTorch, dev/ only).
CFLAGS ?= -O3 -Wall -Wextra -Wno-unused-function -Wno-unused-parameter
CFLAGS += -std=gnu11
LDLIBS = -lm
# -march=native when the compiler accepts it
ifeq ($(shell $(CC) -march=native -x c -c /dev/null -o /dev/null 2>/dev/null && echo ok),ok)
  CFLAGS += -march=native
endif
# OpenMP unless NO_OMP=1, and only if the compiler has it
ifneq ($(NO_OMP),1)
  ifeq ($(shell echo 'int main(){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo ok),ok)
    CFLAGS += -fopenmp
  endif
endif
# SANITIZE=1: AddressSanitizer + UBSan build (used by .ci/run)
ifeq ($(SANITIZE),1)
  CFLAGS := $(filter-out -O3,$(CFLAGS)) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
PYTHON ?= $(firstword $(wildcard dev/venv/bin/python) python3)

HEADERS = $(wildcard *.h)
TESTS = test_empo test_math test_tokenizer test_freeform

.PHONY: all test bench fixtures fuzz clean venv default-data starter

all: train_empo

train_empo: train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_empo: test_empo.c train_empo.c $(HEADERS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

bench_cpu: dev/bench_cpu.c train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# Benchmarks print side-by-side figures against the Python reference (PyTorch/HF, HF tokenizers,
# Math-Verify) in the same run. PYTHON needs torch, transformers, tokenizers and math-verify
# (`make venv`). The 1.5B verifier benchmark is separate: make bench_verifier_run (6 GB of RAM).
bench: bench_cpu bench_tokenizer bench_math
	$(PYTHON) dev/bench_cpu.py

# Regenerates every committed reference fixture (needs the same Python).
fixtures: fixtures_math fixtures_tokenizer fixtures_freeform
	$(PYTHON) dev/make_fixtures.py

# Each test binary ends with "NAME: N passed, N failed"; the last line here is the total.
test: $(TESTS)
	@rm -f .test.log; status=0; \
	for t in $(TESTS); do ./$$t 2>&1 | tee -a .test.log; [ $${PIPESTATUS[0]} -eq 0 ] || status=1; done; \
	awk '/^[a-z_]+: [0-9]+ passed, [0-9]+ failed/ {p+=$$2; f+=$$4} END {print p " passed, " f " failed"; exit (f>0)}' .test.log || status=1; \
	rm -f .test.log; exit $$status

# The embedded default run's data and starter model. Both are committed; these recipes remake them.
gen_fractions: dev/gen_fractions.c
	$(CC) -O2 -Wall -Wextra $< -o $@

default-data: gen_fractions
	./gen_fractions dev/default

# The starter: a new 0.8M-parameter Qwen2 with the byte tokenizer, SFT on worked solutions, stopped
# early on purpose (its maj@8 is clearly above its greedy accuracy: the gap EMPO converts).
STARTER_STEPS ?= 600
starter: train_empo
	./train_empo --init C=128,L=4,NH=4,NKV=2,I=384,T=128 --sft dev/default/sft.jsonl -B 32 -x $(STARTER_STEPS) \
	  -l 1e-3 -E 0 -C 0 -S bf16 -s 1 -o out/starter
	cp out/starter/model.bin dev/default/starter.bin

clean:
	rm -f train_empo $(TESTS) bench_cpu gen_fractions *.o

# Python for dev/ only (fixtures, reference benchmarks): `make venv` puts one in dev/venv.
venv:
	python3 -m venv dev/venv && dev/venv/bin/pip install torch transformers tokenizers safetensors math-verify numpy

# --- math_verify.h / semantic_cluster.h (issue 3) ---
# fixtures_math and bench_math need Math-Verify: MATH_PYTHON=/opt/pyref/bin/python (pip install math-verify).
MATH_PYTHON ?= $(PYTHON)
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
.PHONY: fixtures_math bench_math fuzz_math_run
test_math: test_math.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# Agreement fixture + clustering reference, labelled by the real math_verify (dev/ only).
fixtures_math:
	$(MATH_PYTHON) dev/make_math_fixture.py

# C calls/s vs Python math_verify on the same fixture pairs, in one run.
bench_math: dev/bench_math.c $(HEADERS)
	@mkdir -p dev/cache
	$(CC) $(filter-out -fopenmp,$(CFLAGS)) -I. $< $(LDLIBS) -o dev/cache/bench_math
	$(MATH_PYTHON) dev/bench_math.py dev/cache/bench_math

# libFuzzer + ASan/UBSan on extraction, equality and clustering; `make fuzz` runs it FUZZ_SECONDS.
fuzz_math: dev/fuzz/fuzz_math.c $(HEADERS)
	$(FUZZ_CC) -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. $< -lm -o $@
fuzz_math_run: fuzz_math
	mkdir -p dev/cache/fuzz_math
	./fuzz_math -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=2 dev/cache/fuzz_math dev/fixtures/math_agreement_seeds
fuzz: fuzz_math_run


# --- tokenizer.h / convert (issue 4) ---
# convert: HF folder <-> .bin (dev/convert.c). test_tokenizer: tokenizer + converter tests.
# fixtures_tokenizer needs PYTHON with tokenizers/transformers/torch (e.g. PYTHON=/opt/pyref/bin/python).
all: convert
.PHONY: fixtures_tokenizer bench_tokenizer fuzz_tokenizer_run
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60

convert: dev/convert.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_tokenizer: test_tokenizer.c train_empo.c dev/convert.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# make qwen1.5b.bin HF=path/to/Qwen2.5-Math-1.5B
qwen1.5b.bin: convert
	@test -n "$(HF)" || { echo "usage: make qwen1.5b.bin HF=path/to/Qwen2.5-Math-1.5B"; exit 1; }
	./convert import $(HF) $@ bf16

fixtures_tokenizer: convert
	$(PYTHON) dev/gen_unicode.py > unicode_tables.h.tmp && mv unicode_tables.h.tmp unicode_tables.h
	$(PYTHON) dev/make_tokenizer_fixtures.py
	$(PYTHON) dev/make_hf_roundtrip.py

# Encode throughput on numina_20k.jsonl, ours vs HF tokenizers, one thread each.
bench_tokenizer: dev/bench_tokenizer.c $(HEADERS)
	$(CC) $(filter-out -fopenmp,$(CFLAGS)) $< $(LDLIBS) -o bench_tok
	$(PYTHON) dev/bench_tokenizer.py ./bench_tok

# libFuzzer + ASan/UBSan; `make fuzz` runs each for FUZZ_SECONDS.
fuzz_tokenizer: dev/fuzz/fuzz_tokenizer.c $(HEADERS)
	$(FUZZ_CC) -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. $< -lm -o $@
fuzz_json: dev/fuzz/fuzz_json.c dev/convert.c $(HEADERS)
	$(FUZZ_CC) -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. $< -lm -o $@
fuzz_tokenizer_run: fuzz_tokenizer fuzz_json
	mkdir -p dev/cache/fuzz_tokenizer dev/cache/fuzz_json
	./fuzz_tokenizer -max_total_time=$(FUZZ_SECONDS) -max_len=4096 dev/cache/fuzz_tokenizer dev/fixtures/tok_fuzz_seeds
	./fuzz_json -max_total_time=$(FUZZ_SECONDS) -max_len=32768 dev/cache/fuzz_json dev/fixtures/tok_fuzz_seeds dev/fixtures/hf_tiny
fuzz: fuzz_tokenizer_run


# --- CUDA (issue 7) ---
# train_empo_cu / test_empo_cu: the GPU trainer and its fixture test (needs nvcc; runs without a
# GPU only as far as "SKIP: no CUDA device"). `make cuda` builds both, `make test_cu` runs the test,
# `make dev-cuda` builds the kernel development files in dev/cuda/. PRECISION=FP32 builds everything
# in fp32 (tight checks); GPU_ARCH picks the targets.
NVCC ?= nvcc
GPU_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
PRECISION ?= BF16
NVCCFLAGS ?= -O3 -std=c++17 -diag-suppress 177 -Xcompiler -Wall,-Wextra,-Wno-unused-function,-Wno-unused-parameter
NVCC_LDLIBS = -lcublas -lcublasLt
ifeq ($(PRECISION),FP32)
  NVCCFLAGS += -DENABLE_FP32
else ifneq ($(PRECISION),BF16)
  $(error PRECISION must be BF16 or FP32)
endif
CUDA_TARGETS = train_empo_cu test_empo_cu
DEV_CUDA = $(patsubst %.cu,%,$(wildcard dev/cuda/*.cu))
.PHONY: cuda test_cu dev-cuda clean_cuda

cuda: $(CUDA_TARGETS)

train_empo_cu: train_empo.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

test_empo_cu: test_empo_cu.cu train_empo.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

test_cu: test_empo_cu
	./test_empo_cu

dev/cuda/%: dev/cuda/%.cu dev/cuda/common.h train_empo.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

dev-cuda: $(DEV_CUDA)

clean: clean_cuda
clean_cuda:
	rm -f $(CUDA_TARGETS) $(DEV_CUDA)

# emu-cuda: train_empo.cu's kernels and the whole of test_empo_cu, run on the CPU by a small CUDA
# emulator (dev/cuda/emulate.py, dev/cuda/emu_test.cpp), in the fp32 build and in the bf16 build
# (software bf16). No GPU and no nvcc needed: it checks indexing, masking, synchronization and the
# model's wiring against the PyTorch fixtures. About 4 minutes on one core.
CXX ?= g++
EMU_FLAGS = -std=c++20 -O2 -DNORM_BLOCKS=32 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function -Wno-unused-parameter
.PHONY: emu-cuda
dev/cache/emu_model.inc: dev/cuda/emulate.py train_empo.cu test_empo_cu.cu
	$(PYTHON) dev/cuda/emulate.py
dev/cache/emu_cuda: dev/cuda/emu_test.cpp dev/cache/emu_model.inc $(HEADERS)
	$(CXX) $(EMU_FLAGS) $< -o $@
dev/cache/emu_cuda_bf16: dev/cuda/emu_test.cpp dev/cache/emu_model.inc $(HEADERS)
	$(CXX) $(EMU_FLAGS) -DEMU_BF16 $< -o $@
emu-cuda: dev/cache/emu_cuda dev/cache/emu_cuda_bf16
	./dev/cache/emu_cuda && ./dev/cache/emu_cuda_bf16

# --- free-form / verifier (issue 9) ---
# test_freeform: extraction, guards, stub-judge clustering, the batched verifier vs transformers,
# multiple choice, and --task freeform end to end on dev/freeform. fixtures_freeform remakes the
# verifier fixture (torch + transformers) and the tiny task (standard library only).
# bench_verifier: judged pairs/s at the 1.5B verifier shape, random weights (~6 GB of RAM).
.PHONY: fixtures_freeform bench_verifier_run

test_freeform: test_freeform.c train_empo.c $(HEADERS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

fixtures_freeform:
	$(PYTHON) dev/make_verifier_fixture.py
	python3 dev/gen_freeform.py

bench_verifier: dev/bench_verifier.c train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) -I. $< $(LDLIBS) -o $@

bench_verifier_run: bench_verifier
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./bench_verifier

clean: clean_freeform
clean_freeform:
	rm -f bench_verifier
