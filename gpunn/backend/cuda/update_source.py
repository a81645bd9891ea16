"""The CUDA C source of the optimizer updates (one RawModule), launched by
:class:`~gpunn.backend.cuda.ops.CupyOps`: one grid-stride kernel per rule, templated on the
element type, computing the reference's formula in place on the flat buffers in one pass; plus
sum_of_squares (out += Σ x², after zero_sum) and advance_step (step_scalars[1] += 1).

Every update sees the effective gradient g' of :class:`~gpunn.backend.ops.NumpyOps`
(EffectiveGrad below; sq_norm, the squared global norm of g, a device scalar, or null for no
clipping). With step_scalars not null, lr and the 1-based step number t come from device memory
(step_scalars[0], step_scalars[1]), so that a CUDA graph replays one launch with current values.
"""

from __future__ import annotations

CUDA_SOURCE = r"""
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// g·scale + (i < n_decay ? l2·p + l1·sign(p) : 0): the gradient an update rule sees
template <typename T>
struct EffectiveGrad {
  long long n_decay;
  T scale, l2, l1;
  bool clip;
  __device__ EffectiveGrad(const long long n_decay_, const double l2_, const double l1_, const double max_norm,
                           const double* __restrict__ sq_norm)
      : n_decay(n_decay_), l2((T)l2_), l1((T)l1_), clip(sq_norm != nullptr) {
    scale = clip ? (T)fmin(1.0, max_norm / (sqrt(*sq_norm) + 1e-6)) : (T)1;
  }
  __device__ __forceinline__ T operator()(const long long i, const T gi, const T pi) const {
    T e = clip ? gi * scale : gi;
    if (i < n_decay) {
      if (l2 != (T)0) e += l2 * pi;
      if (l1 != (T)0) e += l1 * (pi != pi ? pi : (T)((pi > (T)0) - (pi < (T)0)));  // sign, NaN kept
    }
    return e;
  }
};

#define FUSED_PARAMS                                                                      \
  const double l2, const double l1, const double max_norm, const double* __restrict__ sq_norm, \
      const double* __restrict__ step_scalars

template <typename T>
__global__ void sgd_update(T* __restrict__ p, const T* __restrict__ g, const long long n, const long long n_decay,
                           const double lr, FUSED_PARAMS) {
  const T lr_ = (T)(step_scalars ? step_scalars[0] : lr);
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    p[i] = pi - lr_ * grad(i, g[i], pi);
  }
}

template <typename T>
__global__ void momentum_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                const long long n, const long long n_decay, const double lr,
                                const double momentum, const int nesterov, FUSED_PARAMS) {
  const T lr_ = (T)(step_scalars ? step_scalars[0] : lr), mu = (T)momentum;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T vi = mu * v[i] + gi;
    v[i] = vi;
    p[i] = pi - lr_ * (nesterov ? gi + mu * vi : vi);
  }
}

template <typename T>
__global__ void adagrad_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h,
                               const long long n, const long long n_decay, const double lr, const double eps,
                               FUSED_PARAMS) {
  const T lr_ = (T)(step_scalars ? step_scalars[0] : lr), eps_ = (T)eps;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T hi = h[i] + gi * gi;
    h[i] = hi;
    p[i] = pi - lr_ * gi / (sqrt(hi) + eps_);
  }
}

template <typename T>
__global__ void rmsprop_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s,
                               const long long n, const long long n_decay, const double lr, const double alpha,
                               const double eps, FUSED_PARAMS) {
  const T lr_ = (T)(step_scalars ? step_scalars[0] : lr), a = (T)alpha, one_minus_a = (T)(1.0 - alpha), eps_ = (T)eps;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T pi = p[i];
    const T gi = grad(i, g[i], pi);
    const T si = a * s[i] + one_minus_a * (gi * gi);
    s[i] = si;
    p[i] = pi - lr_ * gi / (sqrt(si) + eps_);
  }
}

// With step_scalars: step_size = lr / (1 − β1^t), inv_sqrt_bc2 = 1 / √(1 − β2^t), decay_factor = 1 − lr·wd
// from lr = step_scalars[0], t = step_scalars[1], in double (NumpyOps.adam_constants on the host otherwise).
template <typename T>
__global__ void adam_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                            T* __restrict__ v, const long long n, const long long n_decay,
                            const double step_size, const double beta1, const double beta2,
                            const double eps, const double inv_sqrt_bc2, const double decay_factor,
                            const double weight_decay, FUSED_PARAMS) {
  double step_size_d = step_size, inv_sqrt_bc2_d = inv_sqrt_bc2, decay_factor_d = decay_factor;
  if (step_scalars) {
    const double lr = step_scalars[0], t = step_scalars[1];
    step_size_d = lr / (1.0 - pow(beta1, t));
    inv_sqrt_bc2_d = 1.0 / sqrt(1.0 - pow(beta2, t));
    decay_factor_d = 1.0 - lr * weight_decay;
  }
  const T lr_ = (T)step_size_d, b1 = (T)beta1, b2 = (T)beta2;
  const T one_minus_b1 = (T)(1.0 - beta1), one_minus_b2 = (T)(1.0 - beta2);
  const T eps_ = (T)eps, c2 = (T)inv_sqrt_bc2_d, keep = (T)decay_factor_d;
  const EffectiveGrad<T> grad(n_decay, l2, l1, max_norm, sq_norm);
  GRID_STRIDE_LOOP(i, n) {
    const T p0 = p[i];
    const T gi = grad(i, g[i], p0);
    const T mi = b1 * m[i] + one_minus_b1 * gi;
    const T vi = b2 * v[i] + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const T pi = i < n_decay ? p0 * keep : p0;
    p[i] = pi - lr_ * mi / (sqrt(vi) * c2 + eps_);
  }
}

// *out += Σ x² over this grid's share, accumulated in double: a block reduction (warp
// shuffles, then one warp over the warps' sums), one atomicAdd per block. *out must be 0 first
// (zero_sum). No cuBLAS and no host sync, so it can be captured in a CUDA graph.
template <typename T>
__global__ void sum_of_squares(const T* __restrict__ x, const long long n, double* __restrict__ out) {
  __shared__ double warp_sums[32];
  double acc = 0.0;
  GRID_STRIDE_LOOP(i, n) {
    const double xi = (double)x[i];
    acc += xi * xi;
  }
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < (int)((blockDim.x + 31) >> 5) ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) atomicAdd(out, acc);
  }
}

// *out <- 0 (one thread), before sum_of_squares accumulates into it
extern "C" __global__ void zero_sum(double* __restrict__ out) { out[0] = 0.0; }

// step_scalars[1] += 1 (one thread): the step number t of the update that follows, in device memory
extern "C" __global__ void advance_step(double* __restrict__ step_scalars) { step_scalars[1] += 1.0; }
"""

# Templated kernels (instantiated for float and double) and plain extern "C" ones.
KERNEL_NAMES = ("sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update", "sum_of_squares")
PLAIN_KERNEL_NAMES = ("zero_sum", "advance_step")
