// dropout.cpp - see csrc/kernels.inc for the contract of each kernel here.
#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
