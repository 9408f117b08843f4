/*
 * redcompile_kernels.h: the C launch interface of redcompile's CUDA kernels.
 *
 * One entry point per custom op (the names are the `cuda_kernel` fields of the OpDefs in ops/),
 * usable from the torch bindings (torch_bindings.cpp), from TensorRT plugins, or from any C/C++
 * host code. Every entry point
 *   - takes a parameter struct of raw device pointers, sizes and element strides,
 *   - enqueues its kernels on `stream` and never synchronises,
 *   - returns a redcompile_status_t (0 = REDCOMPILE_OK),
 *   - reads no tensor data on the host, so it is safe inside CUDA graph capture.
 * Ops that need scratch memory say how much through *_workspace_size (computed on the current
 * device; call it on the device you launch on) and take (workspace, workspace_bytes).
 *
 * Conventions: strides are in elements, not bytes; the innermost dimension of every tensor must
 * be contiguous (stride 1), and so must every 1-D tensor and every output without a stride field;
 * index tensors are int64; boolean masks are one byte per element (0 or 1, torch.bool). Shapes use the letters of the op docs:
 * B batch, Hq/Hkv query/key-value heads, T packed tokens, S cache capacity, D head dim,
 * W beams, L beam length, C = L - 1 drafted tokens per beam, V vocabulary.
 * docs/cuda.md describes the kernels behind each entry point.
 */
#ifndef REDCOMPILE_KERNELS_H_
#define REDCOMPILE_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define REDCOMPILE_KERNELS_ABI_VERSION 1

typedef enum redcompile_status {
  REDCOMPILE_OK = 0,
  REDCOMPILE_ERR_INVALID_ARGUMENT = 1, /* null pointer, negative size, inconsistent shapes */
  REDCOMPILE_ERR_UNSUPPORTED = 2,      /* a dtype, size or layout these kernels do not handle */
  REDCOMPILE_ERR_WORKSPACE = 3,        /* workspace smaller than *_workspace_size asked for */
  REDCOMPILE_ERR_CUDA = 4              /* a CUDA call failed: see redcompile_last_cuda_error */
} redcompile_status_t;

/* Floating-point element types of activations (logits, queries, caches). */
typedef enum redcompile_dtype {
  REDCOMPILE_FLOAT32 = 0,
  REDCOMPILE_FLOAT16 = 1,
  REDCOMPILE_BFLOAT16 = 2
} redcompile_dtype_t;

/* A short English description of a redcompile_status_t. */
const char* redcompile_status_string(int status);

/* The cudaError_t (as int) of the last failed CUDA call made by an entry point on this host
 * thread, 0 if none. Entry points clear CUDA's own last-error state when they report it. */
int redcompile_last_cuda_error(void);

/* ---------------------------------------------------------------------------------------------
 * Tree attention (op tree_attention): the T packed tokens of each row attend to the cache
 * columns their past mask allows and to their ancestors in the tree, softmax over both in fp32.
 *   q [B, Hq, T, D], k/v [B, Hkv, T, D], past_k/past_v [B, Hkv, S, D], y [B, Hq, T, D]
 *   past_mask [B, T|1, S] (the op's [B, 1, T|1, S] without the head dim; a zero t-stride
 *   broadcasts one row to every token), tree_mask [B, T, T]
 * Query head h reads key/value head h / (Hq / Hkv). A token that may see nothing gets zeros.
 * All five activation tensors share `dtype`. past_k/past_v/past_mask may be NULL when S == 0.
 * num_splits: 0 lets the launcher pick how many parts the S + T columns are split into
 * (flash-decoding); n > 0 asks for at most n (tests use it). Split runs need workspace.
 */
typedef struct redcompile_tree_attention_params {
  redcompile_dtype_t dtype;
  int64_t batch, q_heads, kv_heads, tokens, cache_len, head_dim;
  float scale;
  const void* q;
  int64_t q_stride[4];
  const void* k;
  int64_t k_stride[4];
  const void* v;
  int64_t v_stride[4];
  const void* past_k;
  int64_t past_k_stride[4];
  const void* past_v;
  int64_t past_v_stride[4];
  const uint8_t* past_mask;
  int64_t past_mask_stride[3]; /* (b, t, s); t stride 0 when the mask has one row */
  const uint8_t* tree_mask;
  int64_t tree_mask_stride[3]; /* (b, i, j) */
  void* y;
  int64_t y_stride[4];
  int num_splits;
} redcompile_tree_attention_params_t;

size_t redcompile_tree_attention_workspace_size(const redcompile_tree_attention_params_t* p);
int redcompile_tree_attention(const redcompile_tree_attention_params_t* p, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Beam selection (the per-step selection of op drafter_beam_search):
 *   x        = float(logits[b, w, :]) - max_v float(logits[b, w, v])
 *   warped   = x < kth_largest(x, top_k) ? -50000 : x        (only when 0 < top_k < V)
 *   logprobs[b, w, :] = log_softmax(warped)                    (float32 output)
 *   joint    = logprobs[b, w, v] + beam_scores[b, w]
 *   the W best (w, v) pairs of joint per batch row, best first -> scores, parent = w, token = v
 * Order: joint descending, ties by the smaller flat index w * V + v (docs/cuda.md, tie rule).
 *   logits [B, W, V] (dtype, strides (b, w, v) with v stride 1), beam_scores [B, W] float32,
 *   logprobs [B, W, V] float32 contiguous, scores [B, W] float32, parent/token [B, W] int64,
 *   all outputs contiguous. 1 <= W <= 64.
 */
typedef struct redcompile_beam_select_params {
  redcompile_dtype_t dtype;
  int64_t batch, beams, vocab;
  int64_t top_k;
  const void* logits;
  int64_t logits_stride[3];
  const float* beam_scores;
  int64_t beam_scores_stride[2];
  float* logprobs;
  float* scores;
  int64_t* parent;
  int64_t* token;
} redcompile_beam_select_params_t;

size_t redcompile_beam_select_workspace_size(const redcompile_beam_select_params_t* p);
int redcompile_beam_select(const redcompile_beam_select_params_t* p, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Tree building (op build_tree): beams [B, W, L] -> the deduplicated packed tree.
 *   tokens/parents/depths [B, N] with N = W * (L - 1) + 1, num_tokens [B], paths [B, W, L];
 *   all int64 and contiguous. Beams must share their root (position 0); a packed slot >= N is
 *   not written. W * L <= 4096.
 */
typedef struct redcompile_build_tree_params {
  int64_t batch, beams, length;
  const int64_t* beams_data;
  int64_t beams_stride[3];
  int64_t* tokens;
  int64_t* parents;
  int64_t* depths;
  int64_t* num_tokens;
  int64_t* paths;
} redcompile_build_tree_params_t;

size_t redcompile_build_tree_workspace_size(const redcompile_build_tree_params_t* p);
int redcompile_build_tree(const redcompile_build_tree_params_t* p, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Prompt lookup (op prompt_lookup): history [B, S] int64 (row stride history_stride, element
 * stride 1), lengths [B] int64 (clamped to [0, S]) -> beams [B, K, L] int64, contiguous:
 * each of the K beams copies the continuation of an earlier occurrence of the row's last
 * tokens, candidates ranked by how many sizes of `ngrams` match (any order, each >= 1), then
 * latest first.
 * K <= 64, at most REDCOMPILE_MAX_LOOKUP_NGRAMS sizes. No workspace.
 */
#define REDCOMPILE_MAX_LOOKUP_NGRAMS 8

typedef struct redcompile_prompt_lookup_params {
  int64_t batch, capacity, num_beams, length;
  int64_t num_ngrams;
  int64_t ngrams[REDCOMPILE_MAX_LOOKUP_NGRAMS];
  const int64_t* history;
  int64_t history_stride;
  const int64_t* lengths;
  int64_t* beams;
} redcompile_prompt_lookup_params_t;

size_t redcompile_prompt_lookup_workspace_size(const redcompile_prompt_lookup_params_t* p);
int redcompile_prompt_lookup(const redcompile_prompt_lookup_params_t* p, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Ancestor mask (op ancestor_mask): parents/depths [B, T] int64 -> mask [B, T, T] bool,
 * mask[b, i, j] = j is i or an ancestor of i, by the reference's `steps` rounds of binary
 * lifting (so results equal the reference's even when 2**steps does not cover the depths).
 * Workspace holds the lifting table. Parents outside [0, T) count as roots.
 */
typedef struct redcompile_ancestor_mask_params {
  int64_t batch, tokens, steps;
  const int64_t* parents;
  int64_t parents_stride[2];
  const int64_t* depths;
  int64_t depths_stride[2];
  uint8_t* mask; /* contiguous */
} redcompile_ancestor_mask_params_t;

size_t redcompile_ancestor_mask_workspace_size(const redcompile_ancestor_mask_params_t* p);
int redcompile_ancestor_mask(const redcompile_ancestor_mask_params_t* p, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * Acceptance (op accept): every tree node picks a token (the argmax for greedy rows,
 * temperature < 1e-5; else a draw from the row's top-k/top-p distribution at the depth's
 * uniform), a draft passes when it equals its parent's pick, the first longest beam wins.
 *   logits [B, T, V] (dtype; strides (b, t, v), v stride 1), tokens [B, T] int64,
 *   num_tokens/forced/top_k [B] int64, temperature/top_p [B] float32,
 *   sample_uniforms [B, L] float32 (L = 1 without paths; strides),
 *   paths [B, W, L] int64 (NULL: autoregressive step).
 *   Outputs (contiguous int64): keep_idx [B, T], keep_len [B], last_idx [B],
 *   new_tokens [B, L], num_new [B].
 * Integer outputs equal the reference's for greedy rows; sampling rows agree unless a uniform
 * lands within float rounding of a decision boundary (docs/cuda.md).
 */
typedef struct redcompile_accept_params {
  redcompile_dtype_t dtype;
  int64_t batch, tokens_len, vocab, beams, length;
  const void* logits;
  int64_t logits_stride[3];
  const int64_t* tokens;
  int64_t tokens_stride[2];
  const int64_t* num_tokens;
  const int64_t* forced;
  const float* temperature;
  const int64_t* top_k;
  const float* top_p;
  const float* sample_uniforms;
  int64_t sample_uniforms_stride[2];
  const int64_t* paths; /* NULL: autoregressive step, no tree */
  int64_t paths_stride[3];
  int64_t* keep_idx;
  int64_t* keep_len;
  int64_t* last_idx;
  int64_t* new_tokens;
  int64_t* num_new;
} redcompile_accept_params_t;

size_t redcompile_accept_workspace_size(const redcompile_accept_params_t* p);
int redcompile_accept(const redcompile_accept_params_t* p, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

/* ---------------------------------------------------------------------------------------------
 * KV compaction (op kv_compaction), in place:
 *   cache[b, h, cache_lengths[b] + j, :] = new[b, h, keep_idx[b, j], :] for j < keep_len[b]
 *   cache [B, H, S, D] (written), new [B, H, T, D], cache_lengths/keep_len [B], keep_idx [B, T].
 * Work is proportional to the kept tokens, never to S. The functional op's output is this
 * update applied to a copy of `past` (the torch binding copies first). Slots that would land
 * at or beyond S and keep_idx entries outside [0, T) are skipped, not written.
 */
typedef struct redcompile_kv_compaction_params {
  redcompile_dtype_t dtype;
  int64_t batch, heads, capacity, tokens, head_dim;
  void* cache;
  int64_t cache_stride[4];
  const void* new_kv;
  int64_t new_stride[4];
  const int64_t* cache_lengths;
  const int64_t* keep_idx;
  int64_t keep_idx_stride[2];
  const int64_t* keep_len;
} redcompile_kv_compaction_params_t;

size_t redcompile_kv_compaction_workspace_size(const redcompile_kv_compaction_params_t* p);
int redcompile_kv_compaction(const redcompile_kv_compaction_params_t* p, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* REDCOMPILE_KERNELS_H_ */
