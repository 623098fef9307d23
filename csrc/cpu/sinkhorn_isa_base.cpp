// Sinkhorn inner loops for the base instruction set (flags in CMakeLists.txt).
#define FASTOT_ISA base
#define FASTOT_ISA_NAME "base"
#define FASTOT_VBYTES 16
#include "cpu/sinkhorn_simd.h"
