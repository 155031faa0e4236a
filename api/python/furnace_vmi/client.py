"""The Python SDK: typed calls to the guest's sidecar over the app's socket,
and a batch builder whose calls can take arguments from earlier results.
Mirrors the Rust SDK (``api/src/client.rs``)::

    with furnace_vmi.Vmi.connect_default() as vmi:
        for p in vmi.processes():
            print(p.pid, p.name)

Replies are the protobuf messages of ``api/proto`` (``Translation``,
``GuestInfo``, ``Process``...); every failure raises :class:`VmiError`.
"""

from . import _proto
from ._proto import v1
from ._wire import ADMIN_SERVICE, VMI_SERVICE, Connection
from .errors import VmiError
from .events import BATCH, LONG_POLL, EventStream

#: Where the runtime mounts the app's socket inside its container.
DEFAULT_SOCKET = "/run/furnace/vmi.sock"
#: Seconds a call may wait on the sidecar before the client gives up.
DEFAULT_TIMEOUT = 30.0

_U32 = 0xFFFFFFFF

#: Link targets and operations for :meth:`Batch.link` (names work too: "address", "add").
LINK_ADDRESS = _proto.enum_value(_proto.LinkTargetEnum, "LINK_TARGET_", "ADDRESS")
LINK_PID = _proto.enum_value(_proto.LinkTargetEnum, "LINK_TARGET_", "PID")
LINK_ADD = _proto.enum_value(_proto.LinkOpEnum, "LINK_OP_", "ADD")
LINK_SUBTRACT = _proto.enum_value(_proto.LinkOpEnum, "LINK_OP_", "SUBTRACT")
LINK_OVERWRITE = _proto.enum_value(_proto.LinkOpEnum, "LINK_OP_", "OVERWRITE")


def _build(cls, **fields):
    """A request message; a value protobuf rejects (negative, too wide, wrong
    type) is an INVALID_ARGUMENT VmiError, like a request the sidecar refuses."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as e:
        raise VmiError("INVALID_ARGUMENT", "%s: %s" % (cls.DESCRIPTOR.name, e))


def _milliseconds(seconds):
    """A wait in seconds as the protocol's whole milliseconds (a u32, so capped)."""
    try:
        milliseconds = int(seconds * 1000)
    except (ValueError, TypeError) as e:
        raise VmiError("INVALID_ARGUMENT", "a wait in seconds: %s" % e)
    if milliseconds < 0:
        raise VmiError("INVALID_ARGUMENT", "a wait of %r seconds" % seconds)
    return min(milliseconds, _U32)


def _id(thing):
    """The id of a Subscription or Event, or ``thing`` itself if it is one."""
    return getattr(thing, "id", thing)


def _ids(things):
    try:
        return [_id(thing) for thing in things]
    except TypeError as e:
        raise VmiError("INVALID_ARGUMENT", "a list of events or event ids: %s" % e)


def _space(pid):
    """No address space for the kernel's (pid 0), else process ``pid``'s."""
    return {} if pid == 0 else {"space": _build(v1.AddressSpace, pid=pid)}


class _ServiceClient(object):
    """A client of one ttrpc service on one socket."""

    def __init__(self, service, path, timeout):
        self.service = service
        self.connection = Connection(path, timeout)

    def call(self, method, request, reply_class):
        payload = self.connection.call(self.service, method, request.SerializeToString())
        try:
            return reply_class.FromString(payload)
        except Exception as e:
            raise VmiError("INTERNAL", "undecodable %s reply: %s" % (method, e))


class _Closing(object):
    def close(self):
        """Closes the connection; the sidecar ends this connection's pause leases."""
        self._client.connection.close()

    @property
    def closed(self):
        return self._client.connection.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Vmi(_Closing):
    """A tenant app's view of its guest, over one connection to the sidecar.
    ``pid`` 0 means the kernel's address space throughout."""

    def __init__(self, path=DEFAULT_SOCKET, timeout=DEFAULT_TIMEOUT):
        self._client = _ServiceClient(VMI_SERVICE, path, timeout)
        self._timeout = timeout

    @classmethod
    def connect_default(cls, timeout=DEFAULT_TIMEOUT):
        """Connects to ``/run/furnace/vmi.sock``, where the runtime mounts the app's socket."""
        return cls(DEFAULT_SOCKET, timeout)

    @classmethod
    def connect(cls, path, timeout=DEFAULT_TIMEOUT):
        return cls(path, timeout)

    def _call(self, method, request, reply_class):
        return self._client.call(method, request, reply_class)

    # memory

    def read_physical(self, address, size):
        """-> bytes"""
        request = _build(v1.ReadPhysicalRequest, address=address, size=size)
        return self._call("ReadPhysical", request, v1.Bytes).data

    def write_physical(self, address, data):
        request = _build(v1.WritePhysicalRequest, address=address, data=bytes(data))
        self._call("WritePhysical", request, v1.Empty)

    def read_virtual(self, pid, address, size):
        """Reads kernel virtual memory (``pid`` 0) or process ``pid``'s. -> bytes"""
        request = _build(v1.ReadVirtualRequest, address=address, size=size, **_space(pid))
        return self._call("ReadVirtual", request, v1.Bytes).data

    def write_virtual(self, pid, address, data):
        request = _build(v1.WriteVirtualRequest, address=address, data=bytes(data), **_space(pid))
        self._call("WriteVirtual", request, v1.Empty)

    def read_symbol(self, symbol, offset, size):
        """Reads ``size`` bytes at kernel symbol ``symbol`` + ``offset``. -> bytes"""
        request = _build(v1.ReadSymbolRequest, symbol=symbol, offset=offset, size=size)
        return self._call("ReadSymbol", request, v1.Bytes).data

    def read_integer(self, pid, address, width):
        """Reads a little-endian integer of ``width`` (1, 2, 4 or 8) bytes. -> int"""
        request = _build(v1.ReadIntegerRequest, address=address, width=width, **_space(pid))
        return self._call("ReadInteger", request, v1.Integer).value

    def read_u64(self, pid, address):
        return self.read_integer(pid, address, 8)

    def read_u32(self, pid, address):
        return self.read_integer(pid, address, 4) & _U32

    def read_string(self, pid, address, max_length):
        """Reads a NUL-terminated string of at most ``max_length`` bytes. -> str"""
        request = _build(v1.ReadStringRequest, address=address, max_length=max_length, **_space(pid))
        return self._call("ReadString", request, v1.Text).value

    # translation and symbols

    def translate_kernel(self, address):
        """Kernel virtual to physical (kv2p). -> Translation"""
        return self._call("TranslateKernel", _build(v1.TranslateKernelRequest, address=address), v1.Translation)

    def translate_user(self, pid, address):
        """User virtual to physical in process ``pid`` (uv2p). -> Translation"""
        request = _build(v1.TranslateUserRequest, pid=pid, address=address)
        return self._call("TranslateUser", request, v1.Translation)

    def symbol_address(self, name):
        """Run-time address of a kernel symbol (ksym2v). -> int"""
        return self._call("SymbolAddress", _build(v1.SymbolRequest, name=name), v1.Symbol).address

    def member_offset(self, structure, member):
        """Offset of ``member`` in ``struct structure``. -> int"""
        request = _build(v1.MemberOffsetRequest, structure=structure, member=member)
        return self._call("MemberOffset", request, v1.Integer).value

    # info

    def info(self):
        """-> GuestInfo"""
        return self._call("GetInfo", v1.Empty(), v1.GuestInfo)

    def registers(self, vcpu=0):
        """-> Registers"""
        return self._call("GetRegisters", _build(v1.RegistersRequest, vcpu=vcpu), v1.Registers)

    # control

    def pause(self, lease_ms):
        """Pauses the guest for at most ``lease_ms`` milliseconds (the sidecar
        may grant less). The guest runs again on :meth:`resume`, on expiry, or
        when this connection closes. -> Lease (``id``, ``granted_ms``)"""
        lease_ms = max(0, min(int(lease_ms), _U32))
        return self._call("Pause", _build(v1.PauseRequest, lease_ms=lease_ms), v1.Lease)

    def resume(self, lease):
        """Ends ``lease`` (a Lease or its id)."""
        lease_id = getattr(lease, "id", lease)
        self._call("Resume", _build(v1.ResumeRequest, lease_id=lease_id), v1.Empty)

    # OS

    def processes(self):
        """-> list of Process (pid, ppid, name, uid, dtb, task). Raises
        LIMIT_EXCEEDED when the sidecar could not walk the task list round to
        its head; process_walk() returns the partial list."""
        processes, incomplete = self.process_walk()
        if incomplete:
            raise VmiError(
                "LIMIT_EXCEEDED",
                "the process list is incomplete (%d listed): %s; process_walk() returns the partial list"
                % (len(processes), incomplete),
            )
        return processes

    def process_walk(self):
        """-> (list of Process, reason): the task list as far as the sidecar
        could walk it; reason is "" when it went round the whole list."""
        reply = self._call("ListProcesses", v1.Empty(), v1.ProcessList)
        return list(reply.processes), reply.incomplete

    def modules(self):
        """-> list of Module (name, base, size, address)"""
        return list(self._call("ListModules", v1.Empty(), v1.ModuleList).modules)

    # many calls, one round trip

    def batch(self, batch):
        """Runs every call of ``batch`` in one round trip. -> BatchResults"""
        request = v1.BatchRequest()
        request.calls.extend(batch.calls)
        reply = self._call("Batch", request, v1.BatchResponse)
        error = None
        if reply.HasField("error"):
            error = VmiError.from_proto(reply.error, call_index=reply.error.call_index)
        return BatchResults(list(reply.results), error)

    # events (furnace_vmi.events builds the specs)

    def subscribe(self, spec):
        """Subscribes to ``spec`` (an EventSpec, e.g. ``syscalls(["openat"])``);
        returns once the sidecar has set the breakpoints it needs.
        -> Subscription (``id``, ``queue_capacity`` granted)"""
        return self._call("Subscribe", _build(v1.SubscribeRequest, spec=spec), v1.Subscription)

    def next_events(self, subscription, max_events=BATCH, timeout=LONG_POLL, ack=()):
        """Acks the sync events ``ack``, then returns up to ``max_events``
        events of ``subscription`` (a Subscription or its id), waiting up to
        ``timeout`` seconds for the first. -> EventBatch (``events``, ``dropped``)"""
        timeout_ms = _milliseconds(timeout)
        if self._timeout is not None and timeout >= self._timeout:
            # A wait the connection gives up on breaks it, which ends every subscription.
            raise VmiError(
                "INVALID_ARGUMENT",
                "a wait of %r s is not below the connection's %r s timeout" % (timeout, self._timeout),
            )
        request = _build(
            v1.NextEventsRequest,
            subscription=_id(subscription),
            max_events=max_events,
            timeout_ms=timeout_ms,
            ack=_ids(ack),
        )
        return self._call("NextEvents", request, v1.EventBatch)

    def ack(self, event_ids):
        """Lets the guest go on past sync events ``event_ids`` (Events or their ids)."""
        request = _build(v1.AckRequest, events=_ids(event_ids))
        self._call("Ack", request, v1.Empty)

    def unsubscribe(self, subscription):
        """Ends ``subscription``; returns once its breakpoints are gone from the guest."""
        request = _build(v1.UnsubscribeRequest, subscription=_id(subscription))
        self._call("Unsubscribe", request, v1.Empty)

    def events(self, subscription):
        """The subscription's events as a blocking iterator of Events and
        :class:`Dropped` counts, acking each sync event when asked for the
        next item. -> EventStream"""
        long_poll = LONG_POLL if self._timeout is None else min(LONG_POLL, self._timeout / 2)
        return EventStream(self, subscription, long_poll)


class Batch(object):
    """Calls to run in one round trip. Each helper returns the call's index
    (an int, its "call ref"). A call may take its address or pid from the
    integer result of an earlier call, so a list walk is one message::

        b = Batch()
        head = b.symbol_address("init_task")
        first = b.add_address(b.read_u64(0, tasks_offset), head)
        results = vmi.batch(b)
        results.integer(first)
    """

    def __init__(self):
        self.calls = []

    def __len__(self):
        return len(self.calls)

    def push(self, op, request, links=()):
        """Appends a call: ``op`` is a ``Call`` oneof field name
        (``"read_integer"``, ``"member_offset"``...), ``request`` its message."""
        call = v1.Call()
        try:
            getattr(call, op).CopyFrom(request)
        except (AttributeError, TypeError) as e:
            raise VmiError("INVALID_ARGUMENT", "batch call %r: %s" % (op, e))
        for link in links:
            call.links.add().CopyFrom(link)
        self.calls.append(call)
        return len(self.calls) - 1

    def link(self, call, source, target, op):
        """Before ``call`` runs, combine its ``target`` argument ("address" or
        "pid") with ``source``'s integer result by ``op`` ("add",
        "subtract": result - argument, "overwrite"). Returns ``call``."""
        try:
            target = _proto.enum_value(_proto.LinkTargetEnum, "LINK_TARGET_", target)
            op = _proto.enum_value(_proto.LinkOpEnum, "LINK_OP_", op)
            self.calls[call].links.add(source=source, target=target, op=op)
        except (ValueError, TypeError, IndexError) as e:
            raise VmiError("INVALID_ARGUMENT", "batch link: %s" % e)
        return call

    def add_address(self, call, source):
        """``address = offset + source's result`` (a field of the struct a pointer points to)."""
        return self.link(call, source, LINK_ADDRESS, LINK_ADD)

    def read_integer(self, pid, address, width):
        return self.push("read_integer", _build(v1.ReadIntegerRequest, address=address, width=width, **_space(pid)))

    def read_u64(self, pid, address):
        return self.read_integer(pid, address, 8)

    def read_u32(self, pid, address):
        return self.read_integer(pid, address, 4)

    def read_string(self, pid, address, max_length):
        request = _build(v1.ReadStringRequest, address=address, max_length=max_length, **_space(pid))
        return self.push("read_string", request)

    def read_virtual(self, pid, address, size):
        return self.push("read_virtual", _build(v1.ReadVirtualRequest, address=address, size=size, **_space(pid)))

    def read_physical(self, address, size):
        return self.push("read_physical", _build(v1.ReadPhysicalRequest, address=address, size=size))

    def read_symbol(self, symbol, offset, size):
        return self.push("read_symbol", _build(v1.ReadSymbolRequest, symbol=symbol, offset=offset, size=size))

    def symbol_address(self, name):
        return self.push("symbol_address", _build(v1.SymbolRequest, name=name))

    def translate_kernel(self, address):
        return self.push("translate_kernel", _build(v1.TranslateKernelRequest, address=address))

    def translate_user(self, pid, address):
        return self.push("translate_user", _build(v1.TranslateUserRequest, pid=pid, address=address))

    def member_offset(self, structure, member):
        return self.push("member_offset", _build(v1.MemberOffsetRequest, structure=structure, member=member))


class BatchResults(object):
    """What a batch returned: ``results``, one CallResult per call that ran,
    and ``error``, the VmiError that stopped it (with ``call_index``) or None."""

    def __init__(self, results, error=None):
        self.results = results
        self.error = error

    def __len__(self):
        return len(self.results)

    def __repr__(self):
        return "BatchResults(%d results, error=%r)" % (len(self.results), self.error)

    def _value(self, call):
        if not 0 <= call < len(self.results):
            return None, None
        result = self.results[call]
        kind = result.WhichOneof("value")
        return kind, (getattr(result, kind) if kind else None)

    def integer(self, call):
        """The integer result of ``call``: a ReadInteger or MemberOffset value,
        a symbol's address, a translation's physical address; else None."""
        kind, value = self._value(call)
        if kind == "integer":
            return value
        if kind == "symbol":
            return value.address
        if kind == "translation":
            return value.physical_address
        return None

    def text(self, call):
        kind, value = self._value(call)
        return value if kind == "text" else None

    def data(self, call):
        kind, value = self._value(call)
        return value if kind == "data" else None

    def translation(self, call):
        kind, value = self._value(call)
        return value if kind == "translation" else None

    def raise_error(self):
        """Raises ``error`` if the batch stopped early; returns self otherwise."""
        if self.error is not None:
            raise self.error
        return self


class Admin(_Closing):
    """The sidecar's admin API on ``admin.sock`` (root only), used by the runtime."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self._client = _ServiceClient(ADMIN_SERVICE, path, timeout)

    def _call(self, method, request, reply_class):
        return self._client.call(method, request, reply_class)

    def register(self, app_id, permissions, uid=0, gid=0):
        """Registers ``app_id`` with ``permissions`` (names: "read", "write",
        "pause", "events", "syscalls"); its socket is owned by ``uid``/``gid``.
        -> the app's socket path"""
        try:
            numbers = [_proto.enum_value(_proto.PermissionEnum, "PERMISSION_", p) for p in permissions]
        except (ValueError, TypeError) as e:
            raise VmiError("INVALID_ARGUMENT", str(e))
        request = _build(v1.RegisterRequest, app_id=app_id, permissions=numbers, uid=uid, gid=gid)
        return self._call("Register", request, v1.RegisterResponse).socket_path

    def unregister(self, app_id):
        """-> whether the app held the guest paused (its leases are released)."""
        reply = self._call("Unregister", _build(v1.UnregisterRequest, app_id=app_id), v1.UnregisterResponse)
        return reply.released_pause

    def list_apps(self):
        """-> list of AppInfo; :func:`permission_names` turns its permissions into names."""
        return list(self._call("ListApps", v1.ListAppsRequest(), v1.ListAppsResponse).apps)

    def health(self):
        """-> HealthResponse (guest, run_state, kernel_banner, apps)"""
        return self._call("Health", v1.HealthRequest(), v1.HealthResponse)


def permission_names(permissions):
    """``["read", "pause"]`` for an AppInfo's ``permissions``."""
    out = []
    for number in permissions:
        name = _proto.enum_name(_proto.PermissionEnum, "PERMISSION_", number)
        out.append(name.lower() if name else str(number))
    return out
