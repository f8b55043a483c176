"""safetensors files and module checkpoints: the same files as the C++ library (moe::io) and
`moe train` read and write, with a CRC-32C per tensor in the metadata."""
from typing import Dict, Optional, Tuple

import torch

from . import _C
from ._module import CppModule


def save_file(tensors: Dict[str, torch.Tensor], path: str,
              metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors (in the given order) atomically to a safetensors file."""
    _C.save_file(list(tensors.items()), str(path), dict(metadata or {}))


def load_file(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Reads and checks a safetensors file: (tensors in file order, metadata)."""
    tensors, metadata = _C.load_file(str(path))
    return dict(tensors), metadata


def save(module: CppModule, path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Saves every parameter and buffer of a moe layer by its C++ name (moe::io::save_module)."""
    _C.save_module(_handle(module), str(path), dict(metadata or {}))


def load(module: CppModule, path: str) -> Dict[str, str]:
    """Loads a file written by save() or by C++ into a moe layer and returns its metadata. A
    TopAnyMoE in resize mode first takes the file's expert count."""
    metadata = _C.load_module(_handle(module), str(path))
    module._sync()
    return metadata


def _handle(module):
    if not isinstance(module, CppModule):
        raise TypeError(f"moe.io: expected a moe layer (moe.CppModule), got {type(module).__name__};"
                        " for other modules use save_file/load_file with their state_dict()")
    python_parts = [f"{prefix}.{name}" if prefix else name
                    for prefix, m in module.named_modules() if isinstance(m, CppModule)
                    for name, child in m._modules.items() if not isinstance(child, CppModule)]
    if python_parts:
        # Their tensors are not in the C++ module that save_module/load_module see.
        raise TypeError(f"moe.io: {type(module).__name__} holds Python modules ({python_parts[0]}"
                        f"{', ...' if len(python_parts) > 1 else ''}), which the C++ files do not "
                        "cover; use save_file(module.state_dict(), path) and load_file instead")
    return module.cpp
