// One device and its bmruntime, with every transfer and launch counted: all bytes the runtime moves go through here.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runtime.h"
#include "transcribe_batch_native/bmrt_api.h"

namespace tbn {

class Device {
 public:
  Device(int device_id, bool share_mem);  // DeviceError if the device or bmruntime cannot be opened
  ~Device();
  Device(const Device &) = delete;
  Device &operator=(const Device &) = delete;

  void load(const std::string &bmodel_path);  // DeviceError if bmruntime refuses the file
  void *bmrt() const { return bmrt_; }

  bm_device_mem_t alloc(size_t bytes, const char *what);  // freed with the device
  void clear(bm_device_mem_t m, const char *what);         // all bytes 0
  void h2d(bm_device_mem_t dst, size_t offset, const void *src, size_t size);
  void d2h(void *dst, bm_device_mem_t src, size_t offset, size_t size);
  void d2d(bm_device_mem_t dst, size_t dst_off, bm_device_mem_t src, size_t src_off, size_t size);
  // floats converted to dtype dt (F32/F16/BF16) on the host, then one h2d at offset 0
  void h2d_floats(bm_device_mem_t dst, bm_data_type_t dt, const std::vector<float> &v);
  // stage 0 of `net` with its own io memories, except the inputs given as (index, memory)
  void launch(const bm_net_info_t *net, const std::vector<std::pair<int, bm_device_mem_t>> &inputs = {});

  const Counters &counters() const { return counters_; }

 private:
  void check(bm_status_t s, const std::string &what) const;

  bm_handle_t handle_ = nullptr;
  void *bmrt_ = nullptr;
  std::vector<bm_device_mem_t> owned_;
  Counters counters_;
};

}  // namespace tbn
