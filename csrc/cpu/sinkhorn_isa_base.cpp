#define FASTOT_ISA base
#define FASTOT_ISA_NAME "base"
#include "cpu/sinkhorn_simd.h"
