// The text side of a bmodel as llm_convert lays it out (and native/compile/convert.py, which also builds batched
// decode nets and a log-probability head): embedding, embedding_cache, block_i / block_cache_i, lm_head (+ a
// greedy_head). Recognised by shape; each function below checks one part and says what it found.
#pragma once

#include <string>
#include <vector>

#include "nets.h"
#include "runtime.h"
#include "transcribe_batch_native/bmrt_api.h"

namespace tbn {

// A K/V tensor seen as [outer, seq, inner]: outer = kv heads when heads come before the sequence (the public
// port's K), 1 for [1,SEQ,kv_heads,head_dim] (llm_convert); inner = bytes after the sequence dim. Per batch row.
struct KvLayout {
  size_t outer = 1, inner_bytes = 0;
  int seq = 0;
};

struct TextNets {
  const bm_net_info_t *embed = nullptr, *embed_cache = nullptr, *lm = nullptr;
  const bm_net_info_t *greedy_head = nullptr;  // argmax over lm_head's logits on the device (logits heads only)
  std::vector<const bm_net_info_t *> blocks, caches;  // prefill and decode net of each layer

  // prefill_len (M): positions one prefill launch takes (embedding / block_i width: the longest prompt, audio
  // included); seqlen (S): positions of the decode history (prompt + answer). Equal in native/compile's bmodels;
  // tpu-mlir's `--max_input_length M` (Sophgo's prebuilt Qwen3-ASR) makes M < S.
  int seqlen = 0, prefill_len = 0, hidden = 0;
  // rows of position ids: 1, or 3 equal rows (Qwen3-ASR's MRoPE as some tpu-mlir versions declare it: [3,M] /
  // [3,B,1]; audio + text positions are equal in all three)
  int pos_rows = 1;
  bm_data_type_t states_dt = BM_BFLOAT16;
  size_t row_bytes = 0;     // one position's hidden state
  int batch = 1;            // decode rows (slots)
  // "insert" decode nets (convert.py --batch B) put the new K/V at history slot SEQLEN-1 for their own attention
  // (mask SEQLEN slots, the last being the current token); "concat" nets attend over history + the current token
  // (SEQLEN+1 mask slots). Both return the new K/V for the runtime to copy to each row's own position.
  bool insert = false;
  int mlen = 0;             // decode mask slots per row
  int kv_cap = 0;           // history positions a request may fill: SEQLEN (concat) or SEQLEN-1 (insert)
  bm_data_type_t mask_dt = BM_BFLOAT16, dmask_dt = BM_BFLOAT16;  // prefill, decode mask
  KvLayout kv_prefill[2], kv_hist[2], kv_new[2];  // [0] K, [1] V
  size_t kv_row_bytes = 0;  // one position's K (or V) in one layer, one row

  bool greedy = true;       // lm_head gives the token id (else logits)
  bm_data_type_t lm_out_dt = BM_INT32;
  int vocab = 0;            // logits width (0 for a greedy lm_head)

  // the device memory holding the chosen ids (INT32, one per row), or nullptr when the argmax runs on the host
  const bm_device_mem_t *token_mem() const;
  // the device memory holding the chosen ids' log-probabilities (F32, one per row), or nullptr
  const bm_device_mem_t *logprob_mem() const;
  std::string logprob_source() const;  // "head" | "host" | "none" (Layout::token_logprob)
  std::string head_kind() const;       // Layout::lm_head
};

// LayoutError (naming the net and shape) when the text nets are missing or not a layout the runtime drives.
TextNets recognise_text_nets(const NetSet &nets);

}  // namespace tbn
