SHELL := /bin/bash
# empo.c build. `make` builds train_empo; `make test` builds and runs every test binary and ends
# with one line "N passed, N failed"; `make bench` runs the CPU benchmarks; `make fixtures`
# regenerates the committed reference fixtures (needs Python + PyTorch, dev/ only).
CC ?= gcc
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
TESTS = test_empo test_math

.PHONY: all test bench fixtures fuzz clean venv

all: train_empo

train_empo: train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

test_empo: test_empo.c train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

bench_cpu: dev/bench_cpu.c train_empo.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

# Benchmarks print side-by-side figures against the Python reference (PyTorch/HF) in the same run.
# PYTHON must have torch + transformers (e.g. a venv: make bench PYTHON=/path/to/venv/bin/python).
bench: bench_cpu
	$(PYTHON) dev/bench_cpu.py

# Regenerates the committed reference fixtures (needs torch + transformers).
fixtures:
	$(PYTHON) dev/make_fixtures.py

# Each test binary ends with "NAME: N passed, N failed"; the last line here is the total.
test: $(TESTS)
	@rm -f .test.log; status=0; \
	for t in $(TESTS); do ./$$t 2>&1 | tee -a .test.log; [ $${PIPESTATUS[0]} -eq 0 ] || status=1; done; \
	awk '/^[a-z_]+: [0-9]+ passed, [0-9]+ failed/ {p+=$$2; f+=$$4} END {print p " passed, " f " failed"; exit (f>0)}' .test.log || status=1; \
	rm -f .test.log; exit $$status

clean:
	rm -f train_empo $(TESTS) bench_cpu *.o

# Python for dev/ only (fixtures, reference benchmarks): `make venv` puts one in dev/venv.
venv:
	python3 -m venv dev/venv && dev/venv/bin/pip install torch transformers tokenizers safetensors math-verify numpy

# --- math_verify.h / semantic_cluster.h (issue 3) ---
test_math: test_math.c $(HEADERS)
	$(CC) $(CFLAGS) $< $(LDLIBS) -o $@


# --- tokenizer.h / convert (issue 4) ---

# --- CUDA (issue 7) ---
