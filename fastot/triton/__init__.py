"""Triton kernels (issues 4 and 5). Each module registers its op with fastot._backend when imported."""
