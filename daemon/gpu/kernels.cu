// CUDA kernels of the GPU backend, one per CPU function they mirror (DESIGN.md 2):
//   daemon.anonymizer.objects: class_mask, dilate_rows/dilate_cols (dilate),
//     components_* (_components: 8-connected, numbered by first pixel in raster order),
//     component_boxes, collect_objects (kernel_size), paint_owner (_paint)
//   daemon.anonymizer.oracle: blur_rows/blur_cols (symmetric_pass, axis 1 then 0)
//   daemon.analysis: preprocess (OnnxAnalyzer._preprocess), upsampled_argmax, upsampled_nearest
//
// Every kernel is a grid-stride loop over its items and uses no shared memory or barriers, so
// the same file compiles with g++ through cpu_shim.h (one "thread" walks every item) and is
// tested there against the numpy oracle bit for bit. Float arithmetic goes through __fmul_rn /
// __fadd_rn / __fsub_rn so no multiply-add is ever fused (the oracle's float32 numpy order),
// whatever --fmad says; the CPU build adds -ffp-contract=off for the same reason.

#ifndef CPU_SHIM
#define KERNEL extern "C" __global__
#endif

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// ---------------------------------------------------------------- objects (objects.py)

// mask[i] = labels[i] == class_id
KERNEL void class_mask(const unsigned char* labels, int class_id, unsigned char* mask,
                       long long n) {
    GRID_STRIDE(i, n) { mask[i] = labels[i] == class_id; }
}

// dilate: a (2p+1) x (2p+1) square is a row max then a column max (cv2.dilate, no border).
KERNEL void dilate_rows(const unsigned char* src, unsigned char* dst, int height, int width,
                        int p) {
    GRID_STRIDE(i, (long long)height * width) {
        int x = (int)(i % width);
        long long row = i - x;
        int lo = x - p < 0 ? 0 : x - p;
        int hi = x + p >= width ? width - 1 : x + p;
        unsigned char v = 0;
        for (int t = lo; t <= hi && !v; ++t) v = src[row + t];
        dst[i] = v;
    }
}

KERNEL void dilate_cols(const unsigned char* src, unsigned char* dst, int height, int width,
                        int p) {
    GRID_STRIDE(i, (long long)height * width) {
        int y = (int)(i / width);
        int x = (int)(i % width);
        int lo = y - p < 0 ? 0 : y - p;
        int hi = y + p >= height ? height - 1 : y + p;
        unsigned char v = 0;
        for (int t = lo; t <= hi && !v; ++t) v = src[(long long)t * width + x];
        dst[i] = v;
    }
}

// Union-find labelling (Playne & Hawick 2018): a component's root is its smallest pixel index,
// i.e. its first pixel in raster order, which is the order the spec numbers objects in.
__device__ int find_root(const int* parent, int i) {
    while (parent[i] != i) i = parent[i];
    return i;
}

__device__ void unite(int* parent, int a, int b) {
    bool done = false;
    while (!done) {
        a = find_root(parent, a);
        b = find_root(parent, b);
        if (a < b) {
            int old = atomicMin(&parent[b], a);
            done = old == b;
            b = old;
        } else if (b < a) {
            int old = atomicMin(&parent[a], b);
            done = old == a;
            a = old;
        } else {
            done = true;
        }
    }
}

KERNEL void components_init(const unsigned char* mask, int* parent, long long n) {
    GRID_STRIDE(i, n) { parent[i] = mask[i] ? (int)i : -1; }
}

// 8-connectivity: every pixel joins its left, up-left, up and up-right neighbours.
KERNEL void components_merge(const unsigned char* mask, int* parent, int height, int width) {
    GRID_STRIDE(i, (long long)height * width) {
        if (!mask[i]) continue;
        int x = (int)(i % width);
        int y = (int)(i / width);
        int p = (int)i;
        if (x > 0 && mask[p - 1]) unite(parent, p, p - 1);
        if (y > 0) {
            int up = p - width;
            if (x > 0 && mask[up - 1]) unite(parent, p, up - 1);
            if (mask[up]) unite(parent, p, up);
            if (x + 1 < width && mask[up + 1]) unite(parent, p, up + 1);
        }
    }
}

KERNEL void components_compress(int* parent, long long n) {
    GRID_STRIDE(i, n) {
        if (parent[i] >= 0) parent[i] = find_root(parent, (int)i);
    }
}

// roots[i] = 1 where pixel i starts a component (its root); box_* at the root start empty.
KERNEL void component_roots(const int* parent, int* roots, int* box_x0, int* box_x1,
                            int* box_y1, long long n) {
    GRID_STRIDE(i, n) {
        int root = parent[i] == (int)i;
        roots[i] = root;
        if (root) {
            box_x0[i] = 0x7fffffff;
            box_x1[i] = -1;
            box_y1[i] = -1;
        }
    }
}

// Bounding box of each component, gathered at its root (the root's row is the box's top).
KERNEL void component_boxes(const int* parent, int* box_x0, int* box_x1, int* box_y1,
                            int height, int width) {
    GRID_STRIDE(i, (long long)height * width) {
        int root = parent[i];
        if (root < 0) continue;
        int x = (int)(i % width);
        int y = (int)(i / width);
        atomicMin(&box_x0[root], x);
        atomicMax(&box_x1[root], x);
        atomicMax(&box_y1[root], y);
    }
}

// objects.kernel_size: nearest odd integer to fraction x mean side (ties up), clamped.
__device__ int kernel_size(int w, int h, double fraction, int min_kernel, int max_kernel) {
    double s = fraction * (double)(w + h) / 2.0;
    int k = 2 * (int)floor(s / 2.0) + 1;
    return k < min_kernel ? min_kernel : (k > max_kernel ? max_kernel : k);
}

// One object row per root of this class, at the root's rank in raster order minus one;
// `rank` is the inclusive prefix sum of `roots`. Object rows: class, x, y, w, h, kernel.
KERNEL void collect_objects(const int* parent, const int* rank, const int* box_x0,
                            const int* box_x1, const int* box_y1, int class_id, double fraction,
                            int min_kernel, int max_kernel, int* objects, int height,
                            int width) {
    GRID_STRIDE(i, (long long)height * width) {
        if (parent[i] != (int)i) continue;
        int index = rank[i] - 1;
        int x = box_x0[i];
        int y = (int)(i / width);
        int w = box_x1[i] - x + 1;
        int h = box_y1[i] - y + 1;
        int* row = objects + 6 * (long long)index;
        row[0] = class_id;
        row[1] = x;
        row[2] = y;
        row[3] = w;
        row[4] = h;
        row[5] = kernel_size(w, h, fraction, min_kernel, max_kernel);
    }
}

// objects._paint: a pixel goes to the object with the larger kernel; on equal kernels it
// stays with the object found first (earlier class). One class per launch, so no races;
// `objects` are this class's rows, whose indices in the frame's table start at `first`.
KERNEL void paint_owner(const int* parent, const int* rank, int first, const int* objects,
                        int* owner, int* owner_kernel, long long n) {
    GRID_STRIDE(i, n) {
        int root = parent[i];
        if (root < 0) continue;
        int local = rank[root] - 1;
        int k = objects[6 * (long long)local + 5];
        if (owner[i] < 0 || k > owner_kernel[i]) {
            owner[i] = first + local;
            owner_kernel[i] = k;
        }
    }
}

// ---------------------------------------------------------------- the blur (oracle.py)

// Weights of kernel K (odd) start at weights[offsets[(K - 1) / 2]]: objects.gaussian_weights,
// computed on the host with numpy so both sides use the very same float32 values.

// symmetric_pass along a row: tap x+k if owned by the same object, else x-k, else x itself;
// acc accumulates k = -r..r in float32. Unowned pixels are left alone (never read back).
KERNEL void blur_rows(const unsigned char* frame, const int* owner, const int* objects,
                      const float* weights, const int* offsets, float* rows, int height,
                      int width) {
    GRID_STRIDE(i, (long long)height * width) {
        int me = owner[i];
        if (me < 0) continue;
        int kernel = objects[6 * (long long)me + 5];
        int r = (kernel - 1) / 2;
        const float* g = weights + offsets[r];
        int x = (int)(i % width);
        long long row = i - x;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
        for (int k = -r; k <= r; ++k) {
            int p = x + k;
            int q = x - k;
            long long t;
            if (p >= 0 && p < width && owner[row + p] == me) {
                t = row + p;
            } else if (q >= 0 && q < width && owner[row + q] == me) {
                t = row + q;
            } else {
                t = i;
            }
            float w = g[k + r];
            a0 = __fadd_rn(a0, __fmul_rn(w, (float)frame[3 * t]));
            a1 = __fadd_rn(a1, __fmul_rn(w, (float)frame[3 * t + 1]));
            a2 = __fadd_rn(a2, __fmul_rn(w, (float)frame[3 * t + 2]));
        }
        rows[3 * i] = a0;
        rows[3 * i + 1] = a1;
        rows[3 * i + 2] = a2;
    }
}

__device__ unsigned char round_clamp(float v) {
    float r = rintf(v);  // ties to even, like np.rint
    return (unsigned char)(r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r));
}

// symmetric_pass along a column on the row pass, then rint and clamp; every other pixel is
// copied from the frame unchanged. Writes every pixel of `out`.
KERNEL void blur_cols(const unsigned char* frame, const int* owner, const int* objects,
                      const float* weights, const int* offsets, const float* rows,
                      unsigned char* out, int height, int width) {
    GRID_STRIDE(i, (long long)height * width) {
        int me = owner[i];
        if (me < 0) {
            out[3 * i] = frame[3 * i];
            out[3 * i + 1] = frame[3 * i + 1];
            out[3 * i + 2] = frame[3 * i + 2];
            continue;
        }
        int kernel = objects[6 * (long long)me + 5];
        int r = (kernel - 1) / 2;
        const float* g = weights + offsets[r];
        int y = (int)(i / width);
        int x = (int)(i % width);
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
        for (int k = -r; k <= r; ++k) {
            int p = y + k;
            int q = y - k;
            long long t;
            if (p >= 0 && p < height && owner[(long long)p * width + x] == me) {
                t = (long long)p * width + x;
            } else if (q >= 0 && q < height && owner[(long long)q * width + x] == me) {
                t = (long long)q * width + x;
            } else {
                t = i;
            }
            float w = g[k + r];
            a0 = __fadd_rn(a0, __fmul_rn(w, rows[3 * t]));
            a1 = __fadd_rn(a1, __fmul_rn(w, rows[3 * t + 1]));
            a2 = __fadd_rn(a2, __fmul_rn(w, rows[3 * t + 2]));
        }
        out[3 * i] = round_clamp(a0);
        out[3 * i + 1] = round_clamp(a1);
        out[3 * i + 2] = round_clamp(a2);
    }
}

// ---------------------------------------------------------------- analysis (daemon.analysis)

// OnnxAnalyzer._preprocess: stretch a BGR frame to the network input with bilinear taps
// (OpenCV's INTER_LINEAR convention, taps computed on the host by upsample.linear_taps),
// reorder channels, x = (pixel - mean) / std, 1 x 3 x h x w float32. OpenCV interpolates uint8
// in fixed point; this interpolates in float32 (within one grey level of cv2.resize).
// order[c] is the BGR channel that feeds network channel c; mean and std are in network order.
KERNEL void preprocess(const unsigned char* frame, int frame_width, const int* y_lo,
                       const int* y_hi, const float* y_frac, const int* x_lo, const int* x_hi,
                       const float* x_frac, int height, int width, int order0, int order1,
                       int order2, float mean0, float mean1, float mean2, float std0, float std1,
                       float std2, float* tensor) {
    GRID_STRIDE(i, (long long)height * width) {
        int x = (int)(i % width);
        int y = (int)(i / width);
        long long r0 = (long long)y_lo[y] * frame_width;
        long long r1 = (long long)y_hi[y] * frame_width;
        int c0 = x_lo[x];
        int c1 = x_hi[x];
        float fx = x_frac[x];
        float fy = y_frac[y];
        int order[3] = {order0, order1, order2};
        float mean[3] = {mean0, mean1, mean2};
        float sd[3] = {std0, std1, std2};
        for (int c = 0; c < 3; ++c) {
            int s = order[c];
            float a = (float)frame[3 * (r0 + c0) + s];
            float b = (float)frame[3 * (r0 + c1) + s];
            float d = (float)frame[3 * (r1 + c0) + s];
            float e = (float)frame[3 * (r1 + c1) + s];
            float top = __fadd_rn(__fmul_rn(a, __fsub_rn(1.0f, fx)), __fmul_rn(b, fx));
            float bottom = __fadd_rn(__fmul_rn(d, __fsub_rn(1.0f, fx)), __fmul_rn(e, fx));
            float v = __fadd_rn(__fmul_rn(top, __fsub_rn(1.0f, fy)), __fmul_rn(bottom, fy));
            tensor[(long long)c * height * width + i] = __fdiv_rn(__fsub_rn(v, mean[c]), sd[c]);
        }
    }
}

// upsample.upsampled_argmax_reference: per frame pixel, interpolate every class's logits
// (upsample._lerp's float32 order) and take the first index of the maximum.
KERNEL void upsampled_argmax(const float* logits, int classes, int src_height, int src_width,
                             const int* y_lo, const int* y_hi, const float* y_frac,
                             const int* x_lo, const int* x_hi, const float* x_frac,
                             unsigned char* labels, int height, int width) {
    GRID_STRIDE(i, (long long)height * width) {
        int x = (int)(i % width);
        int y = (int)(i / width);
        long long plane = (long long)src_height * src_width;
        long long a = (long long)y_lo[y] * src_width + x_lo[x];
        long long b = (long long)y_lo[y] * src_width + x_hi[x];
        long long d = (long long)y_hi[y] * src_width + x_lo[x];
        long long e = (long long)y_hi[y] * src_width + x_hi[x];
        float fx = x_frac[x];
        float fy = y_frac[y];
        float best = 0.0f;
        int winner = 0;
        for (int c = 0; c < classes; ++c) {
            const float* l = logits + c * plane;
            float top = __fadd_rn(__fmul_rn(l[a], __fsub_rn(1.0f, fx)), __fmul_rn(l[b], fx));
            float bottom = __fadd_rn(__fmul_rn(l[d], __fsub_rn(1.0f, fx)), __fmul_rn(l[e], fx));
            float v = __fadd_rn(__fmul_rn(top, __fsub_rn(1.0f, fy)), __fmul_rn(bottom, fy));
            if (c == 0 || v > best) {
                best = v;
                winner = c;
            }
        }
        labels[i] = (unsigned char)winner;
    }
}

// upsample.upsampled_nearest: class ids by nearest neighbour, taps from cv2 on the host.
KERNEL void upsampled_nearest(const int* ids, int src_width, const int* y_src, const int* x_src,
                              unsigned char* labels, int height, int width) {
    GRID_STRIDE(i, (long long)height * width) {
        int x = (int)(i % width);
        int y = (int)(i / width);
        labels[i] = (unsigned char)ids[(long long)y_src[y] * src_width + x_src[x]];
    }
}
