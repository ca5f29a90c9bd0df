/* Decode kernels for CPUs with AVX-512 VNNI: native_kernels.py compiles this once per machine and loads it.
   - tuichat_q4q8_matmul: int4 weights times int8 activations. Int4Linear calls it for the few rows of a decode step,
     an AOTInductor package through the C shim (aoti_torch_cpu_q4q8_linear).
   - tuichat_q8_matvec (at the end): the int8 screen of the output projection (screened_head.py).

   Why: torch's int4 kernel for one row unpacks every weight to float and multiplies in float, so a token's matmuls
   were bound by instructions, not by memory (4.9 ms for the bundled model's 120 matmuls, weights streamed from
   memory). Here 64 products at a time are summed by one VNNI instruction (int4 weights as unsigned bytes, int8
   activations): 2.1-2.3 ms. The weights keep the int4 format the model had (groups of 32 with a scale and a
   minimum, as the bundled GGUF's Q4_1).

   The activations are rounded to int8 in blocks of 32 with one scale each, as llama.cpp does, and then what that
   rounding left is rounded to int8 again, at 1/254 of the step: two dot products per weight. With the first term
   alone a matmul's output moved by ~0.6% of its largest value, and a greedy answer of the bundled model changed
   from its second word ("Translate 'good morning' into Spanish."); with both, ~0.2% (bfloat16's rounding of the
   output) and the answers open as float32's do, for ~5% more time. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1); return (uint16_t)(u >> 16);
}

/* One row of activations (bf16) to two int8 terms in blocks of 32: x = dx * (q + r / 254), q = round(x / dx) with
   dx = max|x| / 127, r the rest rounded in steps of dx / 254 (so |r| <= 127); sx = the block's exact sum. */
static void quantize_row(const uint16_t* x, int64_t K, int8_t* xq, int8_t* xr, float* dx, float* sx) {
  for (int64_t b = 0; b < K / 32; b++) {
    float v[32], amax = 0.f, sum = 0.f;
    for (int j = 0; j < 32; j++) {
      v[j] = bf16_to_f32(x[b * 32 + j]); sum += v[j];
      float a = fabsf(v[j]); if (a > amax) amax = a;
    }
    float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < 32; j++) {
      float q = rintf(v[j] * id);
      xq[b * 32 + j] = (int8_t)q;
      int r = (int)lrintf((v[j] * id - q) * 254.f);
      xr[b * 32 + j] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
    dx[b] = d; sx[b] = sum;
  }
}

#define TILES 4
#define RECORD 320 /* one tile's block: 256 bytes of weights, 16 fp16 scales, 16 fp16 mins */
/* W: groups of 64 rows (4 tiles of 16); within a group, for each block b of 32 inputs, each tile's RECORD: 4 chunks
   of 64 bytes, chunk p byte r*4+i holding q[r][32b + 8p + i] (low nibble) and q[r][32b + 8p + 4 + i] (high), then
   the tile's 16 scales d and 16 mins m (fp16): w = d*q + m. One pass reads the weights front to back (software
   prefetching measured no faster). */
static void gemv_row(const uint8_t* W, int64_t N, int64_t K, const int8_t* xq, const int8_t* xr, const float* dx,
                     const float* sx, uint16_t* out) {
  const int64_t B = K / 32, G = N / 64;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512 rest = _mm512_set1_ps(1.f / 254.f);
  const uint8_t* rec = W;
  for (int64_t g = 0; g < G; g++) {
    __m512 acc[TILES];
    for (int u = 0; u < TILES; u++) acc[u] = _mm512_setzero_ps();
    for (int64_t b = 0; b < B; b++) {
      const int32_t* xb = (const int32_t*)(xq + 32 * b);
      const int32_t* rb = (const int32_t*)(xr + 32 * b);
      __m512 vdx = _mm512_set1_ps(dx[b]), vsx = _mm512_set1_ps(sx[b]);
      for (int u = 0; u < TILES; u++, rec += RECORD) {
        __m512i ia = _mm512_setzero_si512(), ib = _mm512_setzero_si512();
        __m512i ra = _mm512_setzero_si512(), rb2 = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) {
          __m512i raw = _mm512_loadu_si512(rec + 64 * p);
          __m512i lo = _mm512_and_si512(raw, low), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
          ia = _mm512_dpbusd_epi32(ia, lo, _mm512_set1_epi32(xb[2 * p]));
          ib = _mm512_dpbusd_epi32(ib, hi, _mm512_set1_epi32(xb[2 * p + 1]));
          ra = _mm512_dpbusd_epi32(ra, lo, _mm512_set1_epi32(rb[2 * p]));
          rb2 = _mm512_dpbusd_epi32(rb2, hi, _mm512_set1_epi32(rb[2 * p + 1]));
        }
        __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(ra, rb2)), rest,
                                     _mm512_cvtepi32_ps(_mm512_add_epi32(ia, ib)));
        __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 256)));
        __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 288)));
        acc[u] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dv, vdx), acc[u]);
        acc[u] = _mm512_fmadd_ps(mv, vsx, acc[u]);
      }
    }
    for (int u = 0; u < TILES; u++) {
      float o[16]; _mm512_storeu_ps(o, acc[u]);
      for (int r = 0; r < 16; r++) out[(g * TILES + u) * 16 + r] = f32_to_bf16(o[r]);
    }
  }
}

/* out[M][N] (bf16) = x[M][K] (bf16) times the int4 weight; K a multiple of 32 up to 16384, N of 64. */
int tuichat_q4q8_matmul(const uint8_t* W, int64_t N, int64_t K,
                        const uint16_t* x, int64_t M, uint16_t* out) {
  if (K % 32 || N % 64 || K > 16384) return 1;
  int8_t xq[16384] __attribute__((aligned(64))), xr[16384] __attribute__((aligned(64)));
  float dx[512], sx[512];
  for (int64_t row = 0; row < M; row++) {
    quantize_row(x + row * K, K, xq, xr, dx, sx);
    gemv_row(W, N, K, xq, xr, dx, sx, out + row * N);
  }
  return 0;
}

/* The C shim an AOTInductor package calls for torch.ops.tuichat.q4q8_linear (torch's stable C ABI for tensors). */
typedef int32_t AOTITorchError;
typedef struct AtenTensorOpaque* AtenTensorHandle;
extern AOTITorchError aoti_torch_get_data_ptr(AtenTensorHandle tensor, void** ret);
extern AOTITorchError aoti_torch_get_dim(AtenTensorHandle tensor, int64_t* ret);
extern AOTITorchError aoti_torch_get_sizes(AtenTensorHandle tensor, int64_t** ret);
extern AOTITorchError aoti_torch_get_strides(AtenTensorHandle tensor, int64_t** ret);
extern AOTITorchError aoti_torch_empty_strided(int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype,
                                               int32_t device_type, int32_t device_index, AtenTensorHandle* ret);
extern int32_t aoti_torch_dtype_bfloat16(void);
extern int32_t aoti_torch_device_type_cpu(void);

/* x: bfloat16 [..., K], contiguous; weight: uint8 [N / 64, K / 32, 4, 320] (native_kernels.pack). */
AOTITorchError aoti_torch_cpu_q4q8_linear(AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle* ret0) {
  int64_t ndim, wdim, *sizes, *strides, *wsizes;
  void *xp, *wp, *op;
  if (aoti_torch_get_dim(x, &ndim) || aoti_torch_get_sizes(x, &sizes) || aoti_torch_get_strides(x, &strides) ||
      aoti_torch_get_dim(weight, &wdim) || aoti_torch_get_sizes(weight, &wsizes) || ndim < 1 || ndim > 8 || wdim != 4)
    return 1;
  const int64_t K = sizes[ndim - 1], N = wsizes[0] * 64;
  int64_t M = 1, out_sizes[8], out_strides[8], expected = 1;
  for (int64_t i = ndim - 1; i >= 0; i--) {
    if (sizes[i] != 1 && strides[i] != expected) return 1; /* not contiguous */
    expected *= sizes[i];
    out_sizes[i] = i == ndim - 1 ? N : sizes[i];
  }
  for (int64_t i = 0; i < ndim - 1; i++) M *= sizes[i];
  out_strides[ndim - 1] = 1;
  for (int64_t i = ndim - 2; i >= 0; i--) out_strides[i] = out_strides[i + 1] * out_sizes[i + 1];
  if (K != wsizes[1] * 32) return 1;
  if (aoti_torch_empty_strided(ndim, out_sizes, out_strides, aoti_torch_dtype_bfloat16(), aoti_torch_device_type_cpu(),
                               0, ret0))
    return 1;
  if (aoti_torch_get_data_ptr(x, &xp) || aoti_torch_get_data_ptr(weight, &wp) || aoti_torch_get_data_ptr(*ret0, &op))
    return 1;
  return tuichat_q4q8_matmul((const uint8_t*)wp, N, K, (const uint16_t*)xp, M, (uint16_t*)op);
}

/* The output projection's int8 screen (screened_head.py): out[N] (float32) = one row x (bf16, K inputs) times int8
   weights w (per-row float32 scale). The activations are rounded for the whole row, twice over as above (x = dx * (q +
   r / 254)), so the error they add stays ~1e-5 of the row's largest value: the screen's bound needs only the weights'
   own rounding. VNNI multiplies unsigned by signed bytes, so the activations go in shifted by 128 and each row's
   weight sum takes the shift back out. W: tiles of 16 rows, for every 4 inputs 64 bytes (byte r*4+i: row r, input
   i); rowsum: the 16 rows' sums of weights; scale: each row's. N a multiple of 16, K of 4, up to 16384. */
int tuichat_q8_matvec(const int8_t* W, const int32_t* rowsum, const float* scale, int64_t N, int64_t K,
                      const uint16_t* x, float* out) {
  if (K % 4 || N % 16 || K > 16384) return 1;
  uint8_t xq[16384] __attribute__((aligned(64))), xr[16384] __attribute__((aligned(64)));
  float amax = 0.f;
  for (int64_t k = 0; k < K; k++) { float a = fabsf(bf16_to_f32(x[k])); if (a > amax) amax = a; }
  const float dx = amax / 127.f, id = dx > 0.f ? 1.f / dx : 0.f;
  for (int64_t k = 0; k < K; k++) {
    float v = bf16_to_f32(x[k]) * id, q = rintf(v);
    int r = (int)lrintf((v - q) * 254.f);
    xq[k] = (uint8_t)((int)q + 128);
    xr[k] = (uint8_t)((r > 127 ? 127 : r < -127 ? -127 : r) + 128);
  }
  const __m512 vdx = _mm512_set1_ps(dx), rest = _mm512_set1_ps(1.f / 254.f);
  const __m512i shift = _mm512_set1_epi32(128);
  for (int64_t t = 0; t < N / 16; t++) {
    const int8_t* w = W + t * 16 * K;
    __m512i iq0 = _mm512_setzero_si512(), iq1 = iq0, ir0 = iq0, ir1 = iq0;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8, w += 128) {
      __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
      iq0 = _mm512_dpbusd_epi32(iq0, _mm512_set1_epi32(*(const int32_t*)(xq + k)), w0);
      ir0 = _mm512_dpbusd_epi32(ir0, _mm512_set1_epi32(*(const int32_t*)(xr + k)), w0);
      iq1 = _mm512_dpbusd_epi32(iq1, _mm512_set1_epi32(*(const int32_t*)(xq + k + 4)), w1);
      ir1 = _mm512_dpbusd_epi32(ir1, _mm512_set1_epi32(*(const int32_t*)(xr + k + 4)), w1);
    }
    for (; k < K; k += 4, w += 64) {
      __m512i w0 = _mm512_loadu_si512(w);
      iq0 = _mm512_dpbusd_epi32(iq0, _mm512_set1_epi32(*(const int32_t*)(xq + k)), w0);
      ir0 = _mm512_dpbusd_epi32(ir0, _mm512_set1_epi32(*(const int32_t*)(xr + k)), w0);
    }
    __m512i sums = _mm512_mullo_epi32(_mm512_loadu_si512(rowsum + t * 16), shift);
    __m512 q = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(iq0, iq1), sums));
    __m512 r = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(ir0, ir1), sums));
    __m512 dot = _mm512_fmadd_ps(r, rest, q);
    _mm512_storeu_ps(out + t * 16, _mm512_mul_ps(_mm512_mul_ps(dot, vdx), _mm512_loadu_ps(scale + t * 16)));
  }
  return 0;
}
