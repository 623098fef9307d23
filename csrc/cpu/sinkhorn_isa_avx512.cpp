#define FASTOT_ISA avx512
#define FASTOT_ISA_NAME "avx512"
#include "cpu/sinkhorn_simd.h"
