"""Furnace VMI: the Python SDK for a guest's sidecar (docs/protocol.md).

Needs only the standard library and ``protobuf``: message classes are built at
import time from ``descriptors.binpb``, the compiled ``api/proto``.
"""

from ._proto import to_dict, v1
from ._wire import ADMIN_SERVICE, MAX_PAYLOAD, VMI_SERVICE
from .client import (
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    LINK_ADD,
    LINK_ADDRESS,
    LINK_OVERWRITE,
    LINK_PID,
    LINK_SUBTRACT,
    Admin,
    Batch,
    BatchResults,
    Vmi,
    permission_names,
)
from .errors import ERROR_CODES, ERROR_TYPE_URL, VmiError
from .events import Dropped, EventStream, breakpoint, breakpoint_at, processes, syscalls, timer

__version__ = "0.1.0"

# Facilities (docs/facilities.md) need `cryptography` as well, so they load on
# first use (and stay out of `import *`): `furnace_vmi.Facilities`,
# `furnace_vmi.Backend`, or `from furnace_vmi.facilities import ...`.
_LAZY = {"Facilities": "facilities", "keygen": "facilities", "Backend": "backend"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib

    return getattr(importlib.import_module("." + module, __name__), name)


__all__ = [
    "ADMIN_SERVICE",
    "Admin",
    "Batch",
    "BatchResults",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "Dropped",
    "ERROR_CODES",
    "ERROR_TYPE_URL",
    "EventStream",
    "LINK_ADD",
    "LINK_ADDRESS",
    "LINK_OVERWRITE",
    "LINK_PID",
    "LINK_SUBTRACT",
    "MAX_PAYLOAD",
    "VMI_SERVICE",
    "Vmi",
    "VmiError",
    "breakpoint",
    "breakpoint_at",
    "permission_names",
    "processes",
    "syscalls",
    "timer",
    "to_dict",
    "v1",
]
