"""CUDA C source of the layer kernels that :class:`~gpunn.backend.cuda.ops.CupyOps` launches,
templated on the element type T (float or double): bias + activation, the activation's
backward (with the bias gradient in the same pass) and softmax-with-loss. The sums are
deterministic (the same bits on every run of one shape): every partial sum is taken in a fixed
order by a fixed thread, with no floating-point atomics. No kernel reads a device value back to
the host or calls cuBLAS, so a CUDA graph can capture them.
"""

from __future__ import annotations

# activation codes, as the kernels' switch takes them
ACTIVATION_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
# The loss kernel's grid: at most this many blocks (each loops over rows), so that the partial
# sums, one double per block, fit a buffer allocated once per device and stream.
MAX_LOSS_BLOCKS = 1024
# The bias-gradient kernel's block: BIAS_COLUMNS adjacent columns (one warp: coalesced reads)
# × BIAS_ROW_THREADS threads striding down the rows. Also #defined in LAYER_SOURCE.
BIAS_COLUMNS = 32
BIAS_ROW_THREADS = 16

KERNEL_NAMES = (
    "bias_activation_forward",
    "activation_backward",
    "activation_bias_backward",
    "softmax_cross_entropy_rows",
)

LAYER_SOURCE = r"""
#define BIAS_COLUMNS 32
#define BIAS_ROW_THREADS 16
#define GRID_STRIDE_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// a = g(z); codes: 0 identity, 1 relu, 2 leaky relu (slope alpha), 3 sigmoid, 4 tanh
template <typename T>
__device__ __forceinline__ T activate(const T z, const int act, const T alpha) {
  switch (act) {
    case 1: return (z > T(0) || z != z) ? z : T(0);  // NaN passes, as NumPy's maximum lets it
    case 2: return z > T(0) ? z : alpha * z;
    case 3: return T(1) / (T(1) + exp(-z));  // exp(-z) = inf gives exactly 0, never NaN
    case 4: return tanh(z);
    default: return z;
  }
}

// g'(z) expressed through a = g(z)
template <typename T>
__device__ __forceinline__ T derivative(const T a, const int act, const T alpha) {
  switch (act) {
    case 1: return a > T(0) ? T(1) : T(0);
    case 2: return a > T(0) ? T(1) : alpha;
    case 3: return a * (T(1) - a);
    case 4: return T(1) - a * a;
    default: return T(1);
  }
}

// y (rows x cols, row-major) <- g(y + b), b broadcast over rows
template <typename T>
__global__ void bias_activation_forward(T* __restrict__ y, const T* __restrict__ b, const long long n,
                                        const long long cols, const int act, const double alpha) {
  const T alpha_ = (T)alpha;
  GRID_STRIDE_LOOP(i, n) { y[i] = activate(y[i] + b[i % cols], act, alpha_); }
}

// dz <- dy * g'(z), from the saved output a; dz may be dy itself (no __restrict__ on them)
template <typename T>
__global__ void activation_backward(T* dz, const T* dy, const T* __restrict__ a, const long long n,
                                    const int act, const double alpha) {
  const T alpha_ = (T)alpha;
  GRID_STRIDE_LOOP(i, n) { dz[i] = dy[i] * derivative(a[i], act, alpha_); }
}

// dz <- dy * g'(z) as above (rows x cols, row-major; dz may be dy), and db[j] = sum_r dz[r][j]
// in the same pass over dz. Block (BIAS_COLUMNS, BIAS_ROW_THREADS): thread (x, y) owns column
// tile*32 + x and the rows y, y + 16, ... in order; the 16 partial sums of a column are then
// added by a fixed tree in shared memory and stored once. So every sum has a fixed order
// (deterministic), needs no atomics and no zeroed db. Sums are kept in double.
template <typename T>
__global__ void activation_bias_backward(T* dz, const T* dy, const T* __restrict__ a, T* __restrict__ db,
                                         const long long rows, const long long cols, const int act,
                                         const double alpha) {
  __shared__ double partial[BIAS_ROW_THREADS][BIAS_COLUMNS];
  const T alpha_ = (T)alpha;
  const long long tiles = (cols + BIAS_COLUMNS - 1) / BIAS_COLUMNS;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const long long j = tile * BIAS_COLUMNS + threadIdx.x;
    double sum = 0.0;
    if (j < cols) {
      for (long long r = threadIdx.y; r < rows; r += BIAS_ROW_THREADS) {
        const long long i = r * cols + j;
        const T g = dy[i] * derivative(a[i], act, alpha_);
        dz[i] = g;
        sum += (double)g;
      }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int stride = BIAS_ROW_THREADS / 2; stride > 0; stride >>= 1) {
      if (threadIdx.y < stride) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + stride][threadIdx.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && j < cols) db[j] = (T)partial[0][threadIdx.x];
    __syncthreads();  // the next tile reuses the shared buffer
  }
}

__device__ __forceinline__ double block_reduce(double v, double* shared, const bool take_max) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const double other = shared[threadIdx.x + stride];
      shared[threadIdx.x] = take_max ? fmax(shared[threadIdx.x], other) : shared[threadIdx.x] + other;
    }
    __syncthreads();
  }
  const double result = shared[0];
  __syncthreads();  // the buffer is reused by the next reduction
  return result;
}

// Blocks loop over the rows of z (rows x cols); blockDim a power of two, blockDim doubles of
// shared memory. With c = max_j z_j and s = sum_j exp(z_j - c) of a row:
//   row_loss = (log s - (z_t - c)) * inv_n      grad_j = (exp(z_j - c) / s - [j == t]) * inv_n
// and loss[0] = sum over rows of row_loss, in the same launch. Accumulated in double, so
// float32 logits lose nothing to the reductions.
//
// The loss sum is deterministic without floating-point atomics: block b adds its rows
// (b, b + gridDim, ...) in order and writes the result to partials[b]; the block that
// finishes last (found with an integer atomic counter) adds partials[0 .. gridDim) by a fixed
// tree, writes loss[0] and puts the counter back to 0, so the next launch -- or the replay of
// a CUDA graph that captured this one -- starts clean. partials needs gridDim doubles.
// Launches sharing partials and counter must not overlap: each stream has its own pair.
template <typename T>
__global__ void softmax_cross_entropy_rows(const T* __restrict__ z, const long long* __restrict__ t,
                                           T* __restrict__ grad, T* __restrict__ loss, double* partials,
                                           unsigned int* counter, const long long rows, const long long cols,
                                           const double inv_n) {
  extern __shared__ double shared[];
  __shared__ bool last_block;
  const double negative_infinity = __longlong_as_double(0xfff0000000000000ULL);  // no host headers in NVRTC
  double block_loss = 0.0;  // kept by thread 0: this block's rows, added in row order
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* zr = z + row * cols;
    T* gr = grad + row * cols;
    double local = negative_infinity;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) local = fmax(local, (double)zr[j]);
    const double c = block_reduce(local, shared, true);
    local = 0.0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) local += exp((double)zr[j] - c);
    const double s = block_reduce(local, shared, false);
    const long long label = t[row];
    if (threadIdx.x == 0) block_loss += (log(s) - ((double)zr[label] - c)) * inv_n;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
      const double p = exp((double)zr[j] - c) / s;
      gr[j] = (T)((p - (j == label ? 1.0 : 0.0)) * inv_n);
    }
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_loss;
    __threadfence();  // release: the partial is visible device-wide before the ticket is taken
    const unsigned int ticket = atomicAdd(counter, 1u);
    last_block = ticket == gridDim.x - 1;
    if (last_block) __threadfence();  // acquire: every other block's partial is visible below
  }
  __syncthreads();
  if (!last_block) return;  // uniform per block: the block reductions below see all its threads
  const volatile double* written = partials;  // written by other blocks: read past this SM's L1
  double local = 0.0;
  for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) local += written[b];
  const double total = block_reduce(local, shared, false);
  if (threadIdx.x == 0) {
    loss[0] = (T)total;
    *counter = 0u;  // every block has taken its ticket: nobody else touches it in this launch
  }
}
"""
