"""One exception family. The CLI prints ``QuikError`` as one line and exits with code 2."""


class QuikError(Exception):
    """A user-facing error: the message names the bad value and what would be accepted."""


class ConfigError(QuikError):
    """A config file or option is invalid."""


class DataError(QuikError):
    """A dataset is missing, empty or unreadable."""


class ModelError(QuikError):
    """A model path is missing, not a model, or of an unsupported architecture."""


class CheckpointError(QuikError):
    """A packed checkpoint is missing, truncated, foreign or of an unknown format version."""


class KernelError(QuikError):
    """A CUDA launcher was given tensors it cannot take (dtype, shape, contiguity, device)."""
