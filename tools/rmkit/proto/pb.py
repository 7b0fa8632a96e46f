"""Every message class and enum of our .proto files under one namespace: `from rmkit.proto import pb`.

    pb.SessionData, pb.Sec1Payload, pb.WiFiConfigPayload, pb.RMakerConfigPayload, pb.Status.Success, ...
The generated modules are also reachable by file name: pb.modules["session"], pb.modules["wifi_config"].
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rmkit.proto import gen

gen.ensure_generated()

modules: dict[str, ModuleType] = {}
_exported: dict[str, str] = {}


def _export(name: str, value, origin: str) -> None:
    # distinct .proto packages may reuse a name (e.g. enum value `Success`), but never a message or enum name
    if name in _exported and globals()[name] is not value:
        raise ImportError(f"{name} is defined in both {_exported[name]} and {origin}")
    globals()[name] = value
    _exported[name] = origin


for _proto in gen.proto_files():
    _module = importlib.import_module(f"rmkit.proto._gen.{gen.module_name(_proto)}")
    modules[_proto.stem] = _module
    for _name in _module.DESCRIPTOR.message_types_by_name:
        _export(_name, getattr(_module, _name), _proto.name)
    for _name in _module.DESCRIPTOR.enum_types_by_name:
        _export(_name, getattr(_module, _name), _proto.name)

__all__ = sorted(_exported) + ["modules"]
