// The bmruntime C API this project uses.
//
// On a machine with libsophon (real cards) the official bmruntime_interface.h is used (CMake defines
// TBN_HAVE_BMRUNTIME_INTERFACE). The simulator SDK taken from the tpu-mlir 1.30.2 wheel ships only
// bmlib_runtime.h, so the declarations below stand in for the few bmruntime types and functions we call. Their
// layouts are those of libbmrt 1.30.2: bm_stage_info_t has four pointers and bm_net_info_t ends with
// input/output loc devices, core_num and addr_mode (an older two-pointer stage layout reads stage 1 as garbage).
#pragma once

#include <bmlib_runtime.h>

#ifdef TBN_HAVE_BMRUNTIME_INTERFACE
#include <bmruntime_interface.h>
#else
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bm_data_type_e {
  BM_FLOAT32 = 0,
  BM_FLOAT16 = 1,
  BM_INT8 = 2,
  BM_UINT8 = 3,
  BM_INT16 = 4,
  BM_UINT16 = 5,
  BM_INT32 = 6,
  BM_UINT32 = 7,
  BM_BFLOAT16 = 8,
  BM_INT4 = 9,
  BM_UINT4 = 10,
} bm_data_type_t;

typedef enum bm_store_mode_e {
  BM_STORE_1N = 0,
  BM_STORE_2N = 1,
  BM_STORE_4N = 2,
} bm_store_mode_t;

typedef enum bm_runtime_flag_e {
  BM_RUNTIME_AUTO = 0,
  BM_RUNTIME_SHARE_MEM = 1 << 0,
} bm_runtime_flag_t;

#define BM_MAX_DIMS_NUM 8
typedef struct bm_shape_s {
  int num_dims;
  int dims[BM_MAX_DIMS_NUM];
} bm_shape_t;

typedef struct bm_tensor_s {
  bm_data_type_t dtype;
  bm_shape_t shape;
  bm_device_mem_t device_mem;
  bm_store_mode_t st_mode;
} bm_tensor_t;

typedef struct bm_stage_info_s {
  bm_shape_t *input_shapes;
  bm_shape_t *output_shapes;
  bm_device_mem_t *input_mems;
  bm_device_mem_t *output_mems;
} bm_stage_info_t;

typedef struct bm_net_info_s {
  const char *name;
  bool is_dynamic;
  int input_num;
  char const **input_names;
  bm_data_type_t *input_dtypes;
  float *input_scales;
  int output_num;
  char const **output_names;
  bm_data_type_t *output_dtypes;
  float *output_scales;
  int stage_num;
  bm_stage_info_t *stages;
  size_t *max_input_bytes;
  size_t *max_output_bytes;
  int *input_zero_point;
  int *output_zero_point;
  int *input_loc_devices;
  int *output_loc_devices;
  int core_num;
  int32_t addr_mode;
} bm_net_info_t;

void *bmrt_create(bm_handle_t bm_handle);
void bmrt_destroy(void *p_bmrt);
void bmrt_set_flags(void *p_bmrt, uint32_t flags);
bool bmrt_load_bmodel(void *p_bmrt, const char *bmodel_path);
int bmrt_get_network_number(void *p_bmrt);
void bmrt_get_network_names(void *p_bmrt, const char ***network_names);
const bm_net_info_t *bmrt_get_network_info(void *p_bmrt, const char *net_name);
void bmrt_tensor_with_device(bm_tensor_t *tensor, bm_device_mem_t device_mem, bm_data_type_t dtype,
                             bm_shape_t shape);
bool bmrt_launch_tensor_ex(void *p_bmrt, const char *net_name, const bm_tensor_t input_tensors[], int input_num,
                           bm_tensor_t output_tensors[], int output_num, bool user_mem, bool user_stmode);

#ifdef __cplusplus
}
#endif
#endif  // TBN_HAVE_BMRUNTIME_INTERFACE
