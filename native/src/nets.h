// The bmodel's nets as bmruntime describes them: lookup by name, shape helpers, and the structural checks every
// recogniser uses, each failing with a LayoutError that names the bmodel, the net and the shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime.h"
#include "transcribe_batch_native/bmrt_api.h"

namespace tbn {

std::string shape_str(const bm_shape_t &s);
uint64_t elements(const bm_shape_t &s);
std::string float_str(float v);  // shortest readable form, e.g. -10000, -inf
inline const bm_shape_t &in_shape(const bm_net_info_t *n, int i) { return n->stages[0].input_shapes[i]; }
inline const bm_shape_t &out_shape(const bm_net_info_t *n, int i) { return n->stages[0].output_shapes[i]; }

class NetSet {
 public:
  NetSet(void *bmrt, std::string bmodel_path);

  const std::vector<std::string> &names() const { return names_; }
  // the first of `candidates` the bmodel holds, or nullptr
  const bm_net_info_t *find(const std::vector<std::string> &candidates) const;
  // the net called `name`; LayoutError naming its role and the nets found when it is missing
  const bm_net_info_t *require(const std::string &name, const std::string &role) const;
  // every net: name, dynamic?, addr_mode, stages, inputs and outputs (stage 0)
  std::vector<NetSummary> summaries() const;

  [[noreturn]] void fail(const std::string &what) const;  // LayoutError "bmodel <path>: <what>"
  void expect_io(const bm_net_info_t *n, int n_in, int n_out, const std::string &what) const;
  void expect_static(const bm_net_info_t *n) const;  // static, at least one stage (stage 0 is the one driven)
  void expect_float_input(const bm_net_info_t *n, int i, const std::string &what) const;
  // std::invalid_argument unless `value` stored in input i's dtype is finite and negative (an additive mask's
  // "hidden"; e.g. -1e5 overflows F16)
  void check_mask_value(const bm_net_info_t *n, int i, float value) const;

 private:
  void *bmrt_;
  std::string path_;
  std::vector<std::string> names_;
};

}  // namespace tbn
