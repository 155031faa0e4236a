"""Message classes built at import time from the compiled descriptors.

``descriptors.binpb`` is the ``FileDescriptorSet`` the Rust build compiles from
``api/proto`` (``furnace_api::DESCRIPTORS``); a Rust test keeps this copy in
step. Loading it here means no generated ``_pb2`` modules and no ``protoc``.
Works with protobuf 3.20+ (Debian's python3-protobuf) through 7.x.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

try:  # Python 3.9+
    from importlib.resources import files as _files
except ImportError:  # pragma: no cover
    _files = None


def _read_descriptors():
    if _files is not None:
        try:
            return _files(__package__).joinpath("descriptors.binpb").read_bytes()
        except (FileNotFoundError, TypeError, ModuleNotFoundError):
            pass
    import os

    with open(os.path.join(os.path.dirname(__file__), "descriptors.binpb"), "rb") as f:
        return f.read()


def _build_pool(serialized):
    """A private pool (so our names never clash with the default pool's),
    files added dependencies first."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(serialized)
    by_name = {f.name: f for f in fds.file}
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name, chain=()):
        if name in added:
            return
        if name in chain:
            raise ImportError("furnace_vmi: import cycle in descriptors at %s" % name)
        proto = by_name.get(name)
        if proto is None:
            raise ImportError("furnace_vmi: descriptors.binpb lacks %s" % name)
        for dep in proto.dependency:
            add(dep, chain + (name,))
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(name)

    for f in fds.file:
        add(f.name)
    return pool


POOL = _build_pool(_read_descriptors())

if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22

    def _message_class(descriptor):
        return message_factory.GetMessageClass(descriptor)

else:  # older protobuf: GetPrototype (removed in newer releases)
    _FACTORY = message_factory.MessageFactory(POOL)

    def _message_class(descriptor):
        return _FACTORY.GetPrototype(descriptor)


def message(full_name):
    """The message class of ``full_name``, e.g. ``furnace.vmi.v1.Process``."""
    return _message_class(POOL.FindMessageTypeByName(full_name))


def enum(full_name):
    """The enum descriptor of ``full_name``."""
    return POOL.FindEnumTypeByName(full_name)


V1 = "furnace.vmi.v1."


class _Namespace(object):
    pass


# Every message of furnace.vmi.v1 as an attribute: v1.Process, v1.ReadVirtualRequest, v1.EventSpec, ...
v1 = _Namespace()
for _file in (
    "furnace/vmi/v1/types.proto",
    "furnace/vmi/v1/events.proto",
    "furnace/vmi/v1/vmi.proto",
    "furnace/vmi/v1/admin.proto",
):
    for _name in POOL.FindFileByName(_file).message_types_by_name:
        setattr(v1, _name, message(V1 + _name))

# The ttrpc envelope.
ttrpc = _Namespace()
for _name in ("Request", "Response", "Status", "Any", "KeyValue"):
    setattr(ttrpc, _name, message("ttrpc." + _name))

ErrorCodeEnum = enum(V1 + "ErrorCode")
PermissionEnum = enum(V1 + "Permission")
LinkTargetEnum = enum(V1 + "LinkTarget")
LinkOpEnum = enum(V1 + "LinkOp")


def enum_value(enum_descriptor, prefix, value):
    """An enum number from an int or a name: ``"add"``, ``"ADD"`` or ``"LINK_OP_ADD"``."""
    if isinstance(value, bool):
        raise TypeError("%s: expected a name or a number, got %r" % (enum_descriptor.full_name, value))
    if isinstance(value, int):
        if value not in enum_descriptor.values_by_number:
            raise ValueError("%s has no value %d" % (enum_descriptor.full_name, value))
        return value
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith(prefix):
            name = prefix + name
        v = enum_descriptor.values_by_name.get(name)
        if v is not None and v.number != 0:
            return v.number
        choices = ", ".join(
            n[len(prefix):].lower() for n, d in enum_descriptor.values_by_name.items() if d.number != 0
        )
        raise ValueError("unknown %s %r (one of: %s)" % (enum_descriptor.name, value, choices))
    raise TypeError("%s: expected a name or a number, got %r" % (enum_descriptor.full_name, value))


def enum_name(enum_descriptor, prefix, number):
    """``"NOT_PERMITTED"`` for ERROR_CODE_NOT_PERMITTED; None for an unknown number."""
    v = enum_descriptor.values_by_number.get(number)
    if v is None:
        return None
    name = v.name
    return name[len(prefix):] if name.startswith(prefix) else name


def _is_repeated(field):
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` is gone in 7
    if repeated is not None:
        return repeated
    return field.label == field.LABEL_REPEATED


def to_dict(msg):
    """A message as plain Python data with proto field names: integers stay
    integers (unlike json_format, which turns 64-bit ones into strings), as
    the Rust CLI's ``--json`` prints them."""
    out = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if _is_repeated(field):
            if field.type == field.TYPE_MESSAGE:
                out[field.name] = [to_dict(m) for m in value]
            else:
                out[field.name] = list(value)
        elif field.type == field.TYPE_MESSAGE:
            if field.containing_oneof is not None and not msg.HasField(field.name):
                continue
            out[field.name] = to_dict(value) if msg.HasField(field.name) else None
        elif field.containing_oneof is not None and not msg.HasField(field.name):
            continue
        elif field.type == field.TYPE_BYTES:
            out[field.name] = bytes(value).hex()
        else:
            out[field.name] = value
    return out
