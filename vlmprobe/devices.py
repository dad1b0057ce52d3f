"""Which device a ``--device`` setting means: one rule for the encoders, RISE and the probe's solver."""
from __future__ import annotations

import contextlib
import re

from .validation import VlmprobeError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def resolve_device(device: str | None = "auto", *, numpy: bool = False) -> str:
    """The device ``device`` names on this machine: "cpu", "cuda:<index>", "mps", or "numpy".

    "auto" is the current CUDA GPU when torch sees one, else "cpu"; where the caller has a NumPy
    path that beats torch on a CPU (``numpy=True``: the probe's solver) it is "numpy" instead, and
    "numpy" (or None) may be asked for by name. A GPU that torch does not see is refused with what
    to use instead, never silently replaced by the CPU.
    """
    if device is None or device == "numpy":
        if numpy:
            return "numpy"
        raise VlmprobeError(f"Unknown device {device!r} here (no NumPy path); choose "
                            f"{', '.join(DEVICE_CHOICES)}.")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "mps")
                                           or re.fullmatch(r"cuda(:\d+)?", device)):
        choices = ", ".join(("numpy",) * numpy + DEVICE_CHOICES)
        raise VlmprobeError(f"Unknown device {device!r}; choose {choices}.")
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return resolve_device("cuda")
        return "numpy" if numpy else "cpu"
    if device in ("cpu", "mps"):
        if device == "mps" and numpy:
            raise VlmprobeError("device='mps': the solver needs float64, which Apple GPUs lack; "
                                "use 'auto', 'numpy' or 'cpu'.")
        if device == "mps" and not torch.backends.mps.is_available():
            raise VlmprobeError("device='mps', but torch sees no Apple GPU here; use 'auto' or "
                                "'cpu'.")
        return device
    if not torch.cuda.is_available():
        fallback = "'auto' (a GPU when present, else NumPy), 'cpu' (torch) or 'numpy'" if numpy \
            else "'auto' (a GPU when present, else the CPU) or 'cpu'"
        raise VlmprobeError(f"device={device!r}, but torch sees no CUDA GPU here; use "
                            f"{fallback}.")
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index >= torch.cuda.device_count():
        raise VlmprobeError(f"device={device!r}, but torch sees {torch.cuda.device_count()} CUDA "
                            "device(s), numbered from cuda:0.")
    return f"cuda:{index}"


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch at ``n`` intra-op CPU threads inside the block, as it was after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
