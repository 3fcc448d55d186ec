"""What :mod:`zoo.inference` reports: a request it cannot honour, and a fallback it made instead."""


class InferenceError(ValueError):
    """A backend/precision request that cannot be honoured (an unknown name, bf16 on ONNX Runtime, an export
    backend for a model on a GPU); the one-line message says what to ask for instead."""


class InferenceWarning(UserWarning):
    """The zoo ran something other than what was asked, and says so in one line: a backend that is not installed
    or cannot convert the model falls back to torch, a CPU without bf16 runs fp32, a damaged cached export is
    exported again."""
