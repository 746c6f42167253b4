SHELL := /bin/bash
# empo.c. Targets, grouped by kind:
#   build     make (train_empo + convert), make starter, make default-data, make qwen1.5b.bin HF=...
#   test      make test (every CPU test; ends with one line "N passed, N failed"), make emu-cuda, make plan-check
#   bench     make bench, make bench_math, make bench_tokenizer, make bench_verifier_run
#   fixtures  make fixtures (all), fixtures_math, fixtures_tokenizer, fixtures_freeform
#   fuzz      make fuzz (libFuzzer, FUZZ_SECONDS each)
#   cuda      make cuda, make test_cu (on a GPU), make dev-cuda
#   clean     make clean (everything any target builds)
# SANITIZE=1 builds with AddressSanitizer + UBSan; NO_OMP=1 without OpenMP. A change of either (or
# of CC/CFLAGS) rebuilds everything: the binaries depend on a stamp of the flags.

# ----------------------------------------------------------------------------
# flags
CFLAGS ?= -O3 -Wall -Wextra -Wno-unused-function -Wno-unused-parameter
CFLAGS += -std=gnu11
LDLIBS = -lm
ifeq ($(shell $(CC) -march=native -x c -c /dev/null -o /dev/null 2>/dev/null && echo ok),ok)
  CFLAGS += -march=native
endif
ifneq ($(NO_OMP),1)
  ifeq ($(shell echo 'int main(){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo ok),ok)
    CFLAGS += -fopenmp
  endif
endif
ifeq ($(SANITIZE),1)
  CFLAGS := $(filter-out -O3,$(CFLAGS)) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
endif
PYTHON ?= $(firstword $(wildcard dev/venv/bin/python) python3)
MATH_PYTHON ?= $(PYTHON)
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.

HEADERS = $(wildcard *.h empoc/*.h)
TESTS = test_empo test_math test_tokenizer test_freeform test_seam test_rewards test_runs
CUDA_TARGETS = train_empo_cu test_empo_cu
DEV_CUDA = $(patsubst %.cu,%,$(wildcard dev/cuda/*.cu))
FUZZERS = fuzz_math fuzz_tokenizer fuzz_json

# The flags stamp: rewritten only when the compile command changes, so `make test SANITIZE=1` after
# a plain `make` rebuilds instead of running the unsanitized binaries.
FLAGS_STAMP = .build-flags
$(FLAGS_STAMP): FORCE
	@echo '$(CC) $(CFLAGS) $(LDLIBS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDLIBS)' > $@
DEPS = $(HEADERS) $(FLAGS_STAMP)

.PHONY: all test emu-cuda bench bench_math bench_tokenizer bench_verifier_run fixtures fixtures_math \
        fixtures_tokenizer fixtures_freeform fuzz cuda test_cu dev-cuda clean venv default-data starter reproduce \
        compare-rewards plan-check FORCE

# ----------------------------------------------------------------------------
# build
all: train_empo convert

train_empo: train_empo.c $(DEPS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# convert: HF folder <-> .bin (dev/convert.c). make qwen1.5b.bin HF=path/to/Qwen2.5-Math-1.5B
convert: dev/convert.c $(DEPS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

qwen1.5b.bin: convert
	@test -n "$(HF)" || { echo "usage: make qwen1.5b.bin HF=path/to/Qwen2.5-Math-1.5B"; exit 1; }
	./convert import $(HF) $@ bf16

# The embedded default run's data and starter model. Both are committed; these recipes remake them.
gen_fractions: dev/gen_fractions.c $(FLAGS_STAMP)
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

# ----------------------------------------------------------------------------
# test: each test binary ends with "NAME: N passed, N failed"; the last line here is the total.
test: $(TESTS)
	@rm -f .test.log; status=0; \
	for t in $(TESTS); do \
	  ./$$t 2>&1 | tee .test.one; rc=$${PIPESTATUS[0]}; cat .test.one >> .test.log; \
	  if [ $$rc -ne 0 ]; then status=1; \
	    grep -Eq '^[a-z_]+: [0-9]+ passed, [1-9][0-9]* failed' .test.one || \
	      echo "$$t: 0 passed, 1 failed (it stopped with exit status $$rc before its summary)" | tee -a .test.log; \
	  fi; \
	done; \
	awk '/^[a-z_]+: [0-9]+ passed, [0-9]+ failed/ {p+=$$2; f+=$$4} \
	     END {print p " passed, " f " failed"; exit (f>0)}' .test.log || status=1; \
	rm -f .test.log .test.one; exit $$status

test_empo: test_empo.c train_empo.c $(DEPS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_math: dev/test/test_math.c $(DEPS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_tokenizer: dev/test/test_tokenizer.c train_empo.c dev/convert.c $(DEPS) | convert
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_freeform: dev/test/test_freeform.c train_empo.c $(DEPS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_rewards: dev/test/test_rewards.c train_empo.c $(DEPS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_runs: dev/test/test_runs.c train_empo.c $(DEPS) | train_empo
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# The engine seam: the host layer compiled against a stub engine with only engine.h's fields.
test_seam: dev/test/test_seam.c train_empo.c $(DEPS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# emu-cuda: train_empo.cu's kernels, the whole of dev/test/test_empo_cu.cu and a short EMPO run of
# train_empo_cu's program, on the CPU by a small CUDA emulator (dev/cuda/emulate.py,
# dev/cuda/emu_test.cpp), in the fp32 build and in the bf16 build (software bf16); then the fp32
# build again with the blocks of every launch in a shuffled order (results must not change); then
# the same short EMPO run, a short SFT run, and a run checkpointed and resumed (--resume) on the CPU
# engine (./train_empo) and the emulated GPU engine, whose log.jsonl lines must agree
# (dev/cuda/compare_runs.py). No GPU and no nvcc needed: it checks indexing, masking,
# synchronization, the seam and the model's wiring against the PyTorch fixtures and the CPU engine.
# The Python here uses only the standard library. About 5 minutes on 2 cores with -j2 (9 without).
CXX ?= g++
EMU_FLAGS = -std=c++20 -O2 -DNORM_BLOCKS=32 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function \
            -Wno-unused-parameter
EMU_SRC = dev/cuda/emu_test.cpp dev/cache/emu_model.inc $(HEADERS) dev/test/test_util.h train_empo.c
EMU_RUN = -x 3 -B 4 -G 4 -n 24 -E 3 --eval-n 24 --eval-G 2 -e dev/cache/emu_eval.jsonl --clip 0.2 --kl 0.05 -C 0 -q
EMU_SFT = --sft dev/default/sft.jsonl -x 2 -B 4 -E 0 -C 0 -q
EMU_RESUME = -x 2 -B 4 -G 4 -n 16 -E 0 -C 1 -q
dev/cache/emu_model.inc: dev/cuda/emulate.py train_empo.cu dev/test/test_empo_cu.cu
	python3 dev/cuda/emulate.py
dev/cache/emu_cuda: $(EMU_SRC)
	$(CXX) $(EMU_FLAGS) $< -o $@
dev/cache/emu_cuda_bf16: $(EMU_SRC)
	$(CXX) $(EMU_FLAGS) -DEMU_BF16 $< -o $@
# Three parts that make -j runs side by side (the emulator is one thread; CI: make -j2 -O emu-cuda).
.PHONY: emu-cuda emu-fp32 emu-bf16 emu-runs
emu-cuda: emu-fp32 emu-bf16 emu-runs
emu-fp32: dev/cache/emu_cuda
	./dev/cache/emu_cuda
	./dev/cache/emu_cuda --shuffle 12345
emu-bf16: dev/cache/emu_cuda_bf16
	./dev/cache/emu_cuda_bf16
	./dev/cache/emu_cuda_bf16 --shuffle 12345
emu-runs: dev/cache/emu_cuda train_empo
	head -8 dev/default/eval.jsonl > dev/cache/emu_eval.jsonl
	rm -rf dev/cache/emu_run_cpu dev/cache/emu_run_gpu
	./train_empo $(EMU_RUN) -o dev/cache/emu_run_cpu
	./dev/cache/emu_cuda --run $(EMU_RUN) -o dev/cache/emu_run_gpu
	python3 dev/cuda/compare_runs.py dev/cache/emu_run_cpu/log.jsonl dev/cache/emu_run_gpu/log.jsonl
	./train_empo $(EMU_SFT) -o dev/cache/emu_run_cpu/sft
	./dev/cache/emu_cuda --run $(EMU_SFT) -o dev/cache/emu_run_gpu/sft
	python3 dev/cuda/compare_runs.py dev/cache/emu_run_cpu/sft/log.jsonl dev/cache/emu_run_gpu/sft/log.jsonl
	./train_empo $(EMU_RESUME) -o dev/cache/emu_run_cpu/resume && \
	  ./train_empo --resume dev/cache/emu_run_cpu/resume -x 3 -q
	./dev/cache/emu_cuda --run $(EMU_RESUME) -o dev/cache/emu_run_gpu/resume && \
	  ./dev/cache/emu_cuda --run --resume dev/cache/emu_run_gpu/resume -x 3 -q
	python3 dev/cuda/compare_runs.py dev/cache/emu_run_cpu/resume/log.jsonl dev/cache/emu_run_gpu/resume/log.jsonl

# plan-check: Qwen2.5-Math-1.5B's EMPO run at the paper's shape fits 24 GiB with train_empo_cu's default
# settings and 16 GiB with the leanest, by its memory plan (--plan: the run's allocations, walked without
# a GPU); prints both tables. Needs only g++ (the emulator's bf16 build runs the real main).
plan-check: dev/cache/emu_cuda_bf16
	dev/cuda/plan_check.sh

# The embedded default run and its baselines, rerun: rewrites doc/reproduce.md's tables and plots.
reproduce:
	dev/reproduce.sh

# ----------------------------------------------------------------------------
# bench: side by side with the Python reference (PyTorch/HF, HF tokenizers, Math-Verify) in the same
# run. PYTHON needs torch, transformers, tokenizers and math-verify (`make venv`).
bench: bench_cpu bench_tokenizer bench_math
	$(PYTHON) dev/bench_cpu.py

# Every label-free reward on the embedded default, side by side (doc/reproduce.md, doc/rewards.md):
# out/compare/table.md and out/compare/compare_rewards.svg. Bash and C only; six runs, evaluated every
# 10 steps (the evaluation is most of the cost), about 30 CPU-minutes. JOBS=N runs N at a time.
compare-rewards: train_empo
	JOBS=$${JOBS:-6} dev/compare_rewards.sh out/compare -E 10

bench_cpu: dev/bench_cpu.c train_empo.c $(DEPS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# C calls/s vs Python math_verify on the same fixture pairs.
bench_math: dev/bench_math.c $(DEPS)
	@mkdir -p dev/cache
	$(CC) $(filter-out -fopenmp,$(CFLAGS)) -I. $< $(LDLIBS) -o dev/cache/bench_math
	$(MATH_PYTHON) dev/bench_math.py dev/cache/bench_math

# Encode throughput on numina_20k.jsonl, ours vs HF tokenizers, one thread each.
bench_tokenizer: dev/bench_tokenizer.c $(DEPS)
	$(CC) $(filter-out -fopenmp,$(CFLAGS)) $< $(LDLIBS) -o bench_tok
	$(PYTHON) dev/bench_tokenizer.py ./bench_tok

# Judged pairs/s at the 1.5B verifier shape, random weights (~6 GB of RAM).
bench_verifier: dev/bench_verifier.c train_empo.c $(DEPS)
	$(CC) $(CFLAGS) -I. $< $(LDLIBS) -o $@

bench_verifier_run: bench_verifier
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./bench_verifier

# ----------------------------------------------------------------------------
# fixtures: regenerate the committed reference fixtures (Python in dev/ only; `make venv`).
fixtures: fixtures_math fixtures_tokenizer fixtures_freeform
	$(PYTHON) dev/make_fixtures.py

# Agreement fixture + clustering reference, labelled by the real math_verify.
fixtures_math:
	$(MATH_PYTHON) dev/make_math_fixture.py

fixtures_tokenizer: convert
	$(PYTHON) dev/gen_unicode.py > empoc/unicode_tables.h.tmp && mv empoc/unicode_tables.h.tmp empoc/unicode_tables.h
	$(PYTHON) dev/make_tokenizer_fixtures.py
	$(PYTHON) dev/make_hf_roundtrip.py

# The verifier fixture (torch + transformers) and the tiny free-form task (standard library only).
fixtures_freeform:
	$(PYTHON) dev/make_verifier_fixture.py
	python3 dev/gen_freeform.py

venv:
	python3 -m venv dev/venv && dev/venv/bin/pip install torch transformers tokenizers safetensors math-verify numpy

# ----------------------------------------------------------------------------
# fuzz: libFuzzer + ASan/UBSan on the answer checker, tokenizer, JSON and safetensors readers.
fuzz_math: dev/fuzz/fuzz_math.c $(HEADERS)
	$(FUZZ_CC) $(FUZZ_FLAGS) $< -lm -o $@
fuzz_tokenizer: dev/fuzz/fuzz_tokenizer.c $(HEADERS)
	$(FUZZ_CC) $(FUZZ_FLAGS) $< -lm -o $@
fuzz_json: dev/fuzz/fuzz_json.c dev/convert.c $(HEADERS)
	$(FUZZ_CC) $(FUZZ_FLAGS) $< -lm -o $@

fuzz: $(FUZZERS)
	mkdir -p dev/cache/fuzz_math dev/cache/fuzz_tokenizer dev/cache/fuzz_json
	./fuzz_math -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=2 dev/cache/fuzz_math \
	  dev/fixtures/math_agreement_seeds
	./fuzz_tokenizer -max_total_time=$(FUZZ_SECONDS) -max_len=4096 dev/cache/fuzz_tokenizer dev/fixtures/tok_fuzz_seeds
	./fuzz_json -max_total_time=$(FUZZ_SECONDS) -max_len=32768 dev/cache/fuzz_json dev/fixtures/tok_fuzz_seeds \
	  dev/fixtures/hf_tiny

# ----------------------------------------------------------------------------
# cuda: train_empo_cu and test_empo_cu (needs nvcc; without a GPU test_empo_cu says "SKIP: no CUDA
# device"). PRECISION=FP32 builds everything in fp32 (tight checks); GPU_ARCH picks the targets.
NVCC ?= nvcc
GPU_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
PRECISION ?= BF16
NVCCFLAGS ?= -O3 -std=c++17 -diag-suppress 177 \
             -Xcompiler -Wall,-Wextra,-Wno-unused-function,-Wno-unused-parameter,-Wno-unknown-pragmas
NVCC_LDLIBS = -lcublas -lcublasLt
ifeq ($(PRECISION),FP32)
  NVCCFLAGS += -DENABLE_FP32
else ifneq ($(PRECISION),BF16)
  $(error PRECISION must be BF16 or FP32)
endif

cuda: $(CUDA_TARGETS)

# train_empo.cu includes train_empo.c (the host layer, compiled against the GPU engine)
train_empo_cu: train_empo.cu train_empo.c $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

test_empo_cu: dev/test/test_empo_cu.cu train_empo.cu train_empo.c $(HEADERS) dev/test/test_util.h
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

test_cu: test_empo_cu
	./test_empo_cu

# sass-check: the tensor-core attention kernels compile to HMMA instructions with no register spills
# (one bf16 compile of train_empo.cu into an object for GPU_ARCH with ptxas -v, then cuobjdump -sass;
# prints registers, spills and HMMA count per kernel; without cuobjdump it counts mma.sync in the PTX). No GPU.
.PHONY: sass-check
sass-check:
	NVCC="$(NVCC)" GPU_ARCH="$(GPU_ARCH)" dev/cuda/sass_check.sh

dev/cuda/%: dev/cuda/%.cu dev/cuda/common.h train_empo.cu train_empo.c $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(GPU_ARCH) $< $(NVCC_LDLIBS) -o $@

dev-cuda: $(DEV_CUDA)

# ----------------------------------------------------------------------------
# clean: everything the targets above build
clean:
	rm -f train_empo convert gen_fractions bench_cpu bench_tok bench_verifier $(TESTS) $(FUZZERS) \
	  $(CUDA_TARGETS) $(DEV_CUDA) $(FLAGS_STAMP) .test.log *.o
	rm -f dev/cache/emu_cuda dev/cache/emu_cuda_bf16 dev/cache/emu_model.inc dev/cache/emu_test_cu.inc \
	  dev/cache/bench_math dev/cache/emu_eval.jsonl dev/cache/test_empo_cu_fp32
	rm -rf dev/cache/emu_run_cpu dev/cache/emu_run_gpu
