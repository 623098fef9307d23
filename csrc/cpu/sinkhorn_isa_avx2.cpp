// Sinkhorn inner loops for the avx2 instruction set (flags in CMakeLists.txt).
#define FASTOT_ISA avx2
#define FASTOT_ISA_NAME "avx2"
#define FASTOT_VBYTES 32
#include "cpu/sinkhorn_simd.h"
