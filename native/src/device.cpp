#include "device.h"

#include "dtype.h"

namespace tbn {

Counters operator+(const Counters &a, const Counters &b) {
  Counters d;
  d.h2d_bytes = a.h2d_bytes + b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes + b.d2h_bytes;
  d.d2d_bytes = a.d2d_bytes + b.d2d_bytes;
  d.h2d_calls = a.h2d_calls + b.h2d_calls;
  d.d2h_calls = a.d2h_calls + b.d2h_calls;
  d.d2d_calls = a.d2d_calls + b.d2d_calls;
  d.launches = a.launches + b.launches;
  return d;
}

Counters operator-(const Counters &a, const Counters &b) {
  Counters d;
  d.h2d_bytes = a.h2d_bytes - b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes - b.d2h_bytes;
  d.d2d_bytes = a.d2d_bytes - b.d2d_bytes;
  d.h2d_calls = a.h2d_calls - b.h2d_calls;
  d.d2h_calls = a.d2h_calls - b.d2h_calls;
  d.d2d_calls = a.d2d_calls - b.d2d_calls;
  d.launches = a.launches - b.launches;
  return d;
}

bool operator==(const Counters &a, const Counters &b) {
  return a.h2d_bytes == b.h2d_bytes && a.d2h_bytes == b.d2h_bytes && a.d2d_bytes == b.d2d_bytes &&
         a.h2d_calls == b.h2d_calls && a.d2h_calls == b.d2h_calls && a.d2d_calls == b.d2d_calls &&
         a.launches == b.launches;
}

Device::Device(int device_id, bool share_mem) {
  bm_status_t s = bm_dev_request(&handle_, device_id);
  if (s != BM_SUCCESS) {
    handle_ = nullptr;
    throw DeviceError("cannot open BM1684X device " + std::to_string(device_id) + " (bm_dev_request returned " +
                      std::to_string(s) + ")");
  }
  bmrt_ = bmrt_create(handle_);
  if (!bmrt_) {
    bm_dev_free(handle_);
    throw DeviceError("bmrt_create failed on device " + std::to_string(device_id));
  }
  if (share_mem) bmrt_set_flags(bmrt_, BM_RUNTIME_SHARE_MEM);
}

Device::~Device() {
  for (auto &m : owned_) bm_free_device(handle_, m);
  if (bmrt_) bmrt_destroy(bmrt_);
  if (handle_) bm_dev_free(handle_);
}

void Device::load(const std::string &bmodel_path) {
  if (!bmrt_load_bmodel(bmrt_, bmodel_path.c_str()))
    throw DeviceError("bmrt_load_bmodel failed for " + bmodel_path + " (not a bmodel for this chip/runtime?)");
}

void Device::check(bm_status_t s, const std::string &what) const {
  if (s != BM_SUCCESS) throw DeviceError(what + " failed (bm_status " + std::to_string(s) + ")");
}

bm_device_mem_t Device::alloc(size_t bytes, const char *what) {
  bm_device_mem_t m{};
  check(bm_malloc_device_byte(handle_, &m, static_cast<unsigned int>(bytes)), what);
  owned_.push_back(m);
  return m;
}

void Device::clear(bm_device_mem_t m, const char *what) { check(bm_memset_device(handle_, 0, m), what); }

void Device::h2d(bm_device_mem_t dst, size_t offset, const void *src, size_t size) {
  check(bm_memcpy_s2d_partial_offset(handle_, dst, const_cast<void *>(src), static_cast<unsigned int>(size),
                                     static_cast<unsigned int>(offset)),
        "host-to-device copy");
  counters_.h2d_bytes += size;
  counters_.h2d_calls += 1;
}

void Device::d2h(void *dst, bm_device_mem_t src, size_t offset, size_t size) {
  check(bm_memcpy_d2s_partial_offset(handle_, dst, src, static_cast<unsigned int>(size),
                                     static_cast<unsigned int>(offset)),
        "device-to-host copy");
  counters_.d2h_bytes += size;
  counters_.d2h_calls += 1;
}

void Device::d2d(bm_device_mem_t dst, size_t dst_off, bm_device_mem_t src, size_t src_off, size_t size) {
  if (bm_mem_get_device_addr(dst) + dst_off == bm_mem_get_device_addr(src) + src_off) return;  // a shared io buffer
  check(bm_memcpy_d2d_byte(handle_, dst, dst_off, src, src_off, size), "device-to-device copy");
  counters_.d2d_bytes += size;
  counters_.d2d_calls += 1;
}

void Device::h2d_floats(bm_device_mem_t dst, bm_data_type_t dt, const std::vector<float> &v) {
  std::vector<uint8_t> h(v.size() * dtype_size(dt));
  store_floats(dt, v.data(), v.size(), h.data());
  h2d(dst, 0, h.data(), h.size());
}

void Device::launch(const bm_net_info_t *net, const std::vector<std::pair<int, bm_device_mem_t>> &inputs) {
  const auto &st = net->stages[0];
  std::vector<bm_tensor_t> in(net->input_num), out(net->output_num);
  for (int i = 0; i < net->input_num; ++i)
    bmrt_tensor_with_device(&in[i], st.input_mems[i], net->input_dtypes[i], st.input_shapes[i]);
  for (const auto &kv : inputs)
    bmrt_tensor_with_device(&in[kv.first], kv.second, net->input_dtypes[kv.first], st.input_shapes[kv.first]);
  for (int i = 0; i < net->output_num; ++i)
    bmrt_tensor_with_device(&out[i], st.output_mems[i], net->output_dtypes[i], st.output_shapes[i]);
  if (!bmrt_launch_tensor_ex(bmrt_, net->name, in.data(), net->input_num, out.data(), net->output_num, true, false))
    throw DeviceError(std::string("launching net ") + net->name + " failed");
  check(bm_thread_sync(handle_), std::string("running net ") + net->name);
  counters_.launches += 1;
}

}  // namespace tbn
