"""Running packed models: QuikLinear and its backends (reference = exact torch, cuda = CuPy kernels)."""
