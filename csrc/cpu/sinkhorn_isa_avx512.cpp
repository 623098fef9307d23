// Sinkhorn inner loops for the avx512 instruction set (flags in CMakeLists.txt).
#define FASTOT_ISA avx512
#define FASTOT_ISA_NAME "avx512"
#define FASTOT_VBYTES 64
#include "cpu/sinkhorn_simd.h"
