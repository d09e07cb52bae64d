"""Backend choice. A backend is a module with the kernel functions of ``runtime/reference.py``."""
from __future__ import annotations

from types import ModuleType

import torch

from quiktool.errors import QuikError

BACKENDS = ("auto", "cuda", "torch")


def cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    from quiktool.runtime import cuda

    return cuda.is_available()


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise QuikError(f"backend {name!r} is not accepted; use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "cuda" if cuda_available() else "torch"
    if name == "cuda" and not cuda_available():
        raise QuikError("backend 'cuda' needs a CUDA GPU and CuPy (pip install 'quiktool[cuda]'); use --backend torch")
    return name


def get_backend(name: str) -> ModuleType:
    if name == "cuda":
        from quiktool.runtime import cuda

        return cuda
    from quiktool.runtime import reference

    return reference
