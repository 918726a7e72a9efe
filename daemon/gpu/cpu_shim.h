// Lets kernels.cu compile as plain C++ (g++ -include cpu_shim.h -x c++ kernels.cu): every
// kernel is a grid-stride loop, so one call with a 1 x 1 launch walks all of its items.
// Atomics become plain read-modify-writes (one thread); the *_rn intrinsics become the
// operators they round like (IEEE float32, round to nearest even; build with
// -ffp-contract=off so nothing is fused).
#pragma once
#define CPU_SHIM 1

#include <math.h>

struct ShimDim {
    unsigned int x, y, z;
};
static const ShimDim blockIdx = {0, 0, 0};
static const ShimDim threadIdx = {0, 0, 0};
static const ShimDim blockDim = {1, 1, 1};
static const ShimDim gridDim = {1, 1, 1};

#define __device__ static inline
#define KERNEL extern "C"

static inline int atomicMin(int* address, int value) {
    int old = *address;
    if (value < old) *address = value;
    return old;
}

static inline int atomicMax(int* address, int value) {
    int old = *address;
    if (value > old) *address = value;
    return old;
}

static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
