#define FASTOT_ISA avx2
#define FASTOT_ISA_NAME "avx2"
#include "cpu/sinkhorn_simd.h"
