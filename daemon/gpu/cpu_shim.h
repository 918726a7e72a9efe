// Lets kernels.cu compile as plain C++ (g++ -include cpu_shim.h -x c++ kernels.cu): every
// kernel is a grid-stride loop, so a call from one CPU thread (index 0 of 1, the default) walks
// all of its items, and calls from n threads after shim_set_thread(i, n) share them out like
// n CUDA threads, racing on the same memory. Atomics are real (GCC __atomic builtins); the
// *_rn intrinsics become the operators they round like (IEEE float32, round to nearest even;
// build with -ffp-contract=off so nothing is fused).
#pragma once
#define CPU_SHIM 1

#include <math.h>

struct ShimDim {
    unsigned int x, y, z;
};
static thread_local ShimDim blockIdx = {0, 0, 0};
static thread_local ShimDim threadIdx = {0, 0, 0};
static thread_local ShimDim blockDim = {1, 1, 1};
static const ShimDim gridDim = {1, 1, 1};

extern "C" void shim_set_thread(unsigned int index, unsigned int count) {
    threadIdx.x = index;
    blockDim.x = count;
}

#define __device__ static inline
#define KERNEL extern "C"

static inline int atomicMin(int* address, int value) {
    int old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
    while (value < old &&
           !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old;
}

static inline int atomicMax(int* address, int value) {
    int old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
    while (value > old &&
           !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old;
}

static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
