"""Pure tensor algorithms: statistics, outlier choice, quantizers, GPTQ (+ 2:4 sparsity). Imports only torch."""
