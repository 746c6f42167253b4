"""
Runs train_empo.cu and test_empo_cu.cu on the CPU, to check their logic where there is no GPU.

It copies train_empo.cu from "1. utilities" up to main (every kernel, its host launcher, the
model, forward, backward, update) and test_empo_cu.cu after its #include into dev/cache/, rewriting
only what plain C++ can't parse or run:
  kernel<<<grid, block, smem>>>(args)   ->  emu_launch(kernel, grid, block, smem, args)
  extern __shared__ T name[];           ->  T *name = (T *)emu_dyn_smem;
  the cuBLAS/cuBLASLt gemm()            ->  emu_gemm(), a plain column-major GEMM written from the
                                            BLAS definition (so the row-/column-major mapping of
                                            matmul_forward/backward is checked too)
  the tensor-core primitives block      ->  nothing: emu_test.cpp defines mma_bf16_16816, ldmatrix_x4
    (// ==== begin/end tensor-core primitives)   and ldmatrix_x4_trans as warp collectives, and the
                                            cp.async functions (the copy lands at the wait)
  test_empo_cu.cu's main                ->  test_empo_cu_main
The include of train_empo.c (the host layer) is kept, pointed at the repository root, so the
emulated program is the real one (emu_cuda --run FLAGS runs it). dev/cuda/emu_test.cpp includes
the copies after a shim that runs the threads of a block as fibers (__syncthreads and warp shuffles
are cooperative barriers), blocks one after another (or shuffled: --shuffle SEED), and maps device
memory to host memory; in fp32 (ENABLE_FP32) or with a software bf16 (-DEMU_BF16). It checks
indexing, masking, tiling, synchronization and the wiring, not cuBLAS itself or speed.

Usage: make emu-cuda
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
n_launch = 0


def split_top(s):   # split on commas outside parentheses
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(cur)
    return out


def launch(m):
    global n_launch
    n_launch += 1
    cfg = [a.strip() for a in split_top(m.group(2))]
    if len(cfg) == 2:
        cfg.append("0")
    return f"emu_launch({m.group(1)}, {cfg[0]}, {cfg[1]}, {cfg[2]}, {m.group(3)});"


def rewrite(text, what):
    text = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1 *\2 = (\1 *)emu_dyn_smem;", text)
    text = re.sub(r"([A-Za-z_]\w*(?:<\w+>)?)<<<(.*?)>>>\((.*?)\);", launch, text, flags=re.S)
    if "<<<" in text:
        sys.exit(f"emulate.py: a kernel launch in {what} was not rewritten")
    return text


def between(text, start, end, what):
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        sys.exit(f"emulate.py: cannot find '{start}' ... '{end}' in {what}")
    return text[:i], text[i:j], text[j:]


src = open(os.path.join(ROOT, "train_empo.cu")).read()
_, model, _ = between(src, "// 1. utilities and precision", "#ifndef TESTING", "train_empo.cu")
head, _, tail = between(model, "static cublasHandle_t g_cublas;", "// Row-major views.", "train_empo.cu")
model = head + """static int g_cublas, g_cublaslt;   // emulated: gemm() is emu_gemm
static void *g_lt_workspace;
static const size_t LT_WORKSPACE = 32u << 20;   // as train_empo.cu: the memory plan counts it
static int g_lt_fallbacks = 0;
static void gemm(void *D, cudaDataType_t d_type, int ldd, const floatX *A, int transA, int lda, const floatX *Bm,
                 int transB, int ldb,
                 int m, int n, int k, float beta, const floatX *bias) {
    emu_gemm(D, d_type, ldd, A, transA, lda, Bm, transB, ldb, m, n, k, beta, bias);
}

""" + tail
# the tensor-core primitives (inline PTX: mma.sync, ldmatrix, cp.async) -> emu_test.cpp's emulation, same names
head, _, tail = between(model, "// ==== begin tensor-core primitives", "// ==== end tensor-core primitives",
                        "train_empo.cu")
model = head + "// (the tensor-core primitives: dev/cuda/emu_test.cpp's emulation)\n" + tail
if re.search(r"\basm\s*(volatile\s*)?\(", model):
    sys.exit("emulate.py: inline PTX in train_empo.cu outside the tensor-core primitives block")
model = rewrite(model, "train_empo.cu")
# the host layer: train_empo.c itself, included from dev/cache/ (plain host code, nothing to rewrite)
if '#include "train_empo.c"' not in model:
    sys.exit("emulate.py: train_empo.cu does not include train_empo.c (the host layer)")
model = model.replace('#include "train_empo.c"', '#include "../../train_empo.c"')

test = open(os.path.join(ROOT, "dev", "test", "test_empo_cu.cu")).read()
if '#include "../../train_empo.cu"' not in test:
    sys.exit("emulate.py: test_empo_cu.cu does not include train_empo.cu")
test = test.split('#include "../../train_empo.cu"', 1)[1]
test = test.replace('#include "test_util.h"', '#include "../test/test_util.h"')   # the .inc lives in dev/cache/
if "int main(int argc, char **argv) {" not in test:
    sys.exit("emulate.py: test_empo_cu.cu's main is not 'int main(int argc, char **argv) {'")
test = test.replace("int main(int argc, char **argv) {", "static int test_empo_cu_main(int argc, char **argv) {")
test = rewrite(test, "test_empo_cu.cu")

os.makedirs(os.path.join(ROOT, "dev", "cache"), exist_ok=True)
for name, body in (("emu_model.inc", model), ("emu_test_cu.inc", test)):
    with open(os.path.join(ROOT, "dev", "cache", name), "w") as f:
        f.write("// generated by dev/cuda/emulate.py: do not edit\n" + body)
print(f"emulate.py: dev/cache/emu_model.inc, dev/cache/emu_test_cu.inc ({n_launch} kernel launches rewritten)")
