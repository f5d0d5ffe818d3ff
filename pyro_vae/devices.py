"""Where tensors live: one home for the device names a run accepts and their check."""
import torch

DEVICE_HELP = "cpu, cuda, cuda:N or auto"


def valid_device_name(name: str) -> bool:
    """Whether ``name`` is a device name a run accepts (``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    return name in ("cpu", "cuda", "auto") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA where available) as a ``torch.device``; a clear
    ``ValueError`` for anything else or for CUDA on a machine without it."""
    if not valid_device_name(name):
        raise ValueError(f"device must be {DEVICE_HELP}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use the CPU (device='cpu', or "
                         f"--device cpu on the command line)")
    return torch.device(name)
