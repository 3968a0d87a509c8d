#include "nets.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <cstdlib>
#include <sstream>

#include "dtype.h"

namespace tbn {

std::string shape_str(const bm_shape_t &s) {
  std::ostringstream o;
  o << "[";
  for (int i = 0; i < s.num_dims; ++i) o << (i ? "," : "") << s.dims[i];
  o << "]";
  return o.str();
}

std::string float_str(float v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

uint64_t elements(const bm_shape_t &s) {
  uint64_t n = 1;
  for (int i = 0; i < s.num_dims; ++i) n *= static_cast<uint64_t>(s.dims[i]);
  return n;
}

NetSet::NetSet(void *bmrt, std::string bmodel_path) : bmrt_(bmrt), path_(std::move(bmodel_path)) {
  const int count = bmrt_get_network_number(bmrt_);
  const char **raw = nullptr;
  bmrt_get_network_names(bmrt_, &raw);
  for (int i = 0; i < count; ++i) names_.emplace_back(raw[i]);
  free(raw);
}

const bm_net_info_t *NetSet::find(const std::vector<std::string> &candidates) const {
  for (const auto &c : candidates)
    if (std::find(names_.begin(), names_.end(), c) != names_.end()) return bmrt_get_network_info(bmrt_, c.c_str());
  return nullptr;
}

const bm_net_info_t *NetSet::require(const std::string &name, const std::string &role) const {
  if (auto *n = find({name})) return n;
  std::string all;
  for (const auto &x : names_) all += (all.empty() ? "" : ", ") + x;
  fail("missing net '" + name + "' (" + role + "); nets found: " + all);
}

std::vector<NetSummary> NetSet::summaries() const {
  std::vector<NetSummary> out;
  auto tensor = [](const char *name, bm_data_type_t dt, const bm_shape_t &sh) {
    return TensorSummary{name, dtype_name(dt), std::vector<int>(sh.dims, sh.dims + sh.num_dims)};
  };
  for (const auto &name : names_) {
    const bm_net_info_t *n = bmrt_get_network_info(bmrt_, name.c_str());
    NetSummary s;
    s.name = name;
    s.is_dynamic = n->is_dynamic;
    s.addr_mode = n->addr_mode;
    s.stage_num = n->stage_num;
    for (int i = 0; i < n->input_num; ++i) s.inputs.push_back(tensor(n->input_names[i], n->input_dtypes[i], in_shape(n, i)));
    for (int i = 0; i < n->output_num; ++i)
      s.outputs.push_back(tensor(n->output_names[i], n->output_dtypes[i], out_shape(n, i)));
    out.push_back(std::move(s));
  }
  return out;
}

void NetSet::fail(const std::string &what) const { throw LayoutError("bmodel " + path_ + ": " + what); }

void NetSet::expect_io(const bm_net_info_t *n, int n_in, int n_out, const std::string &what) const {
  if (n->input_num != n_in || n->output_num != n_out)
    fail("net " + std::string(n->name) + " has " + std::to_string(n->input_num) + " inputs and " +
         std::to_string(n->output_num) + " outputs; expected " + std::to_string(n_in) + " and " + std::to_string(n_out) +
         " (" + what + ")");
}

void NetSet::expect_static(const bm_net_info_t *n) const {
  if (n->is_dynamic)
    fail("net " + std::string(n->name) + " is dynamic; this runtime drives static nets (compile without --dynamic)");
  if (n->stage_num < 1) fail("net " + std::string(n->name) + " has no stage");
}

void NetSet::expect_float_input(const bm_net_info_t *n, int i, const std::string &what) const {
  if (!is_float(n->input_dtypes[i]))
    fail("net " + std::string(n->name) + " input " + std::to_string(i) + " (" + what + ") dtype " +
         dtype_name(n->input_dtypes[i]) + " is not a float type");
}

void NetSet::check_mask_value(const bm_net_info_t *n, int i, float value) const {
  const bm_data_type_t dt = n->input_dtypes[i];
  uint8_t bytes[4];
  store_floats(dt, &value, 1, bytes);
  const float stored = load_float(dt, bytes, 0);
  if (!std::isfinite(stored) || !(stored < 0))
    throw std::invalid_argument("mask value " + float_str(value) + " is " + float_str(stored) + " as " +
                                dtype_name(dt) + " (mask input " + std::to_string(i) + " of net " + n->name +
                                " in bmodel " + path_ + "): an additive mask needs a finite negative value");
}

}  // namespace tbn
