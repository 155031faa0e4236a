"""Facilities: the app's one way out, to its tenant's backend, and its
storage (docs/facilities.md). The Python twin of ``furnace_api::Facilities``
(api/src/facilities/client.rs), byte for byte on the wire.

    from furnace_vmi.facilities import Facilities

    with Facilities.connect_default() as fac:
        fac.notify(b"scan finished")
        answer = fac.request(b"which pids to watch?", timeout=5.0)
        fac.storage.put("last-scan", answer)

Every failure raises :class:`furnace_vmi.VmiError`, the VMI API's error model:
``UNAVAILABLE`` (no relay, or it went away), ``LIMIT_EXCEEDED`` (size, rate,
a full outbox, the storage quota), ``NOT_PERMITTED`` (the backend refused this
app, or a Welcome or message not from the pinned backend key),
``DEADLINE_EXCEEDED`` (no answer in time), ``NOT_FOUND``, ``INVALID_ARGUMENT``.
"""

import collections
import os
import socket
import struct
import sys
import threading
import time

from . import _noise, _proto
from ._noise import KEY_LEN, encode_key, keygen, public_of, read_private, read_public  # noqa: F401 (re-exported)
from .errors import VmiError

DEFAULT_SOCKET = "/run/furnace/fac.sock"
DEFAULT_APP_KEY = "/run/furnace/app.key"
DEFAULT_BACKEND_KEY = "/run/furnace/backend.pub"
#: Overrides DEFAULT_BACKEND_KEY: the tenant can pin its backend in the image.
BACKEND_KEY_ENV = "FURNACE_BACKEND_KEY"
#: How long a call waits for the relay to take or answer it, in seconds.
RELAY_TIMEOUT = 30.0
#: Backend messages kept for :meth:`Facilities.receive` before the oldest go.
INBOX_LIMIT = 1024
#: Framing and protobuf overhead on top of a sealed message's ciphertext.
FRAME_OVERHEAD = 64
#: The largest frame the client reads: a sealed reply of 64 MiB.
READ_LIMIT = _noise.sealed_len(64 << 20) + FRAME_OVERHEAD

KIND_NOTIFY, KIND_REQUEST, KIND_REPLY, KIND_DIRECTED, KIND_BROADCAST = 1, 2, 3, 4, 5

Frame = _proto.message("furnace.fac.v1.Frame")
StorageCall = _proto.message("furnace.fac.v1.StorageCall")
_Put = _proto.message("furnace.fac.v1.StorageCall.Put")
_Keys = _proto.message("furnace.fac.v1.StorageCall.Keys")

_LEN = struct.Struct(">I")


def _private_arg(key):
    if isinstance(key, (bytes, bytearray)) and len(key) == KEY_LEN:
        return bytes(key)
    return read_private(key)


def _public_arg(key):
    if isinstance(key, (bytes, bytearray)) and len(key) == KEY_LEN:
        return bytes(key)
    return read_public(key)


# --- frames (api/src/facilities/frame.rs) ---------------------------------------


def encode_frame(**body):
    """``encode_frame(hello=Hello(...))``: the length-prefixed Frame."""
    payload = Frame(**body).SerializeToString()
    return _LEN.pack(len(payload)) + payload


def _recv_exact(sock, n, keep_going=None):
    parts, left = [], n
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except socket.timeout:
            if keep_going is not None and keep_going():
                continue
            raise
        if not chunk:
            if left == n:
                return None
            raise EOFError("the stream ended inside a frame")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(sock, limit, keep_going=None):
    """One Frame, None at a clean end of stream. Raises EOFError, OSError, or
    ValueError for an oversized, undecodable or empty frame."""
    header = _recv_exact(sock, 4, keep_going)
    if header is None:
        return None
    (length,) = _LEN.unpack(header)
    if length > limit:
        raise ValueError("a frame of %d bytes is over the limit of %d" % (length, limit))
    payload = _recv_exact(sock, length, keep_going) if length else b""
    if payload is None:
        raise EOFError("the stream ended inside a frame")
    try:
        frame = Frame.FromString(payload)
    except Exception as e:
        raise ValueError("an undecodable frame: %s" % e)
    if frame.WhichOneof("body") is None:
        raise ValueError("a frame with no body")
    return frame


# --- the client (api/src/facilities/client.rs) ------------------------------------

Message = collections.namedtuple("Message", ["kind", "data"])
Message.__doc__ = """A backend message: ``kind`` "directed" (to this app alone) or "broadcast"."""

_PENDING = object()


def _bytes(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VmiError("INVALID_ARGUMENT", "expected bytes, not %s" % type(data).__name__)
    return bytes(data)


def _unavailable(context):
    return VmiError("UNAVAILABLE", str(context))


def _seconds(timeout):
    try:
        timeout = float(timeout)
    except (TypeError, ValueError) as e:
        raise VmiError("INVALID_ARGUMENT", "a wait in seconds: %s" % e)
    if timeout != timeout or timeout < 0:
        raise VmiError("INVALID_ARGUMENT", "a wait of %r seconds" % timeout)
    return timeout


class Facilities(object):
    """A session with the tenant backend through the app's facilities relay."""

    def __init__(self, sock, handshake):
        """Use :meth:`connect` or :meth:`connect_default`."""
        self._sock = sock
        self._handshake = handshake
        self._upstream = handshake.upstream
        self._send_lock = threading.Lock()
        self._next_seq = 1
        self._next_storage_id = 1
        self._cond = threading.Condition()
        self._downstream = None
        self._refused = None
        self._closed = None
        self._closing = False
        self._sent = {}  # seq -> kind, until answered
        self._accepted = {}
        self._replies = {}
        self._storage = {}
        self._messages = collections.deque()
        self.dropped_messages = 0
        self._delivered = 0
        self._last_accepted = 0
        self._status = None
        self._reader = threading.Thread(target=self._read_loop, name="furnace-fac-reader", daemon=True)

    @classmethod
    def connect_default(cls):
        """Connects with the paths the runtime sets up in an app partition."""
        try:
            app_key = read_private(DEFAULT_APP_KEY)
        except VmiError as e:
            raise VmiError("NOT_FOUND", "the app's key: %s; is furnace.dev/app-key set?" % e.message)
        try:
            text = os.environ.get(BACKEND_KEY_ENV)
            if text is not None:
                backend = _noise.decode_key("$" + BACKEND_KEY_ENV, text)
            else:
                backend = read_public(DEFAULT_BACKEND_KEY)
        except VmiError as e:
            raise VmiError("NOT_FOUND", "the backend's key: %s; is furnace.dev/backend-key set?" % e.message)
        return cls.connect(DEFAULT_SOCKET, app_key, backend)

    @classmethod
    def connect(cls, socket_path, app_key, backend_public):
        """Opens a session: sends the Hello and waits for the relay's status.
        ``app_key``: 32 raw bytes or a ``.key`` path; ``backend_public``: 32
        raw bytes, the ``.pub`` line, or its path. The backend need not be
        reachable yet: notifies wait in the relay."""
        app_key, backend = _private_arg(app_key), _public_arg(backend_public)
        try:
            handshake = _noise.AppHandshake(app_key, backend)
        except _noise.NoiseError as e:
            raise VmiError("INVALID_ARGUMENT", "opening the session: %s" % e)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(RELAY_TIMEOUT)
            sock.connect(str(socket_path))
            sock.sendall(encode_frame(hello=_proto.message("furnace.fac.v1.Hello")(noise=handshake.hello)))
        except OSError as e:
            sock.close()
            raise _unavailable("connecting to the facilities relay at %s: %s" % (socket_path, e))
        fac = cls(sock, handshake)
        fac._reader.start()
        try:
            fac._wait(RELAY_TIMEOUT, lambda: True if fac._status is not None else _PENDING)
        except VmiError:
            fac.close()
            raise
        return fac

    @property
    def relay_status(self):
        """The relay's limits and whether it reaches the backend now (a RelayStatus)."""
        with self._cond:
            return self._status

    def notify(self, data):
        """Sends ``data``; returns once the relay has taken it (it is then
        delivered once the backend is reachable). A message the relay refuses
        (size, rate, room) fails with LIMIT_EXCEEDED and is not sent."""
        seq = self._send(KIND_NOTIFY, data, 0)
        self._wait(RELAY_TIMEOUT, lambda: self._accepted.pop(seq, _PENDING))

    def request(self, data, timeout=RELAY_TIMEOUT):
        """Sends ``data`` and waits up to ``timeout`` seconds for the reply (bytes)."""
        timeout = _seconds(timeout)
        seq = self._send(KIND_REQUEST, data, min(int(timeout * 1000), (1 << 32) - 1))
        try:
            return self._wait(timeout, lambda: self._replies.pop(seq, _PENDING))
        finally:
            with self._cond:  # a reply that comes after the deadline is not kept
                self._replies.pop(seq, None)
                self._sent.pop(seq, None)

    def receive(self, timeout=RELAY_TIMEOUT):
        """The next :class:`Message` from the backend, waiting up to ``timeout``; None if none came."""
        try:
            return self._wait(_seconds(timeout), lambda: self._messages.popleft() if self._messages else _PENDING)
        except VmiError as e:
            if e.code == "DEADLINE_EXCEEDED":
                return None
            raise

    def flush(self, timeout=RELAY_TIMEOUT):
        """Waits until the backend has taken every notify sent so far."""
        self._wait(_seconds(timeout), lambda: True if self._delivered >= self._last_accepted else _PENDING)

    @property
    def storage(self):
        """The app's storage, kept by the relay under the provider's quota."""
        return Storage(self)

    def close(self):
        """Ends the session (the relay keeps what it took)."""
        with self._cond:
            self._closing = True
            if self._closed is None:
                self._closed = _unavailable("the session was closed")
            self._cond.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(5.0)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, kind, data, deadline_ms):
        data = _bytes(data)
        with self._cond:
            if self._refused is not None:
                raise self._refused
            limit = self._status.max_message_bytes if self._status is not None else None
        if limit is not None and len(data) > limit:
            raise VmiError(
                "LIMIT_EXCEEDED", "a message of %d bytes is over the provider's limit of %d" % (len(data), limit)
            )
        with self._send_lock:
            seq = self._next_seq
            request_id = seq if kind == KIND_REQUEST else 0
            try:
                ciphertext = self._upstream.seal(seq, kind, request_id, data)
            except _noise.NoiseError as e:
                raise VmiError("LIMIT_EXCEEDED", str(e))
            sealed = _proto.message("furnace.fac.v1.Sealed")(
                seq=seq, kind=kind, request_id=request_id, ciphertext=ciphertext, deadline_ms=deadline_ms
            )
            with self._cond:
                self._sent[seq] = kind
            try:
                self._sock.sendall(encode_frame(sealed=sealed))
            except OSError as e:
                with self._cond:
                    self._sent.pop(seq, None)
                raise _unavailable("sending to the facilities relay: %s" % e)
            self._next_seq += 1
        return seq

    def _storage_call(self, **op):
        with self._send_lock:
            call_id = self._next_storage_id
            self._next_storage_id += 1
            try:
                self._sock.sendall(encode_frame(storage_call=StorageCall(id=call_id, **op)))
            except OSError as e:
                raise _unavailable("sending to the facilities relay: %s" % e)
        result = self._wait(RELAY_TIMEOUT, lambda: self._storage.pop(call_id, _PENDING))
        which = result.WhichOneof("result")
        if which == "error":
            raise VmiError.from_proto(result.error)
        return which, result

    def _wait(self, timeout, ready):
        """Waits for ``ready()`` (called under the lock) to give something but
        _PENDING, until ``timeout`` (DEADLINE_EXCEEDED) or the connection ends."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = ready()
                if got is not _PENDING:
                    if isinstance(got, VmiError):
                        raise got
                    return got
                if self._closed is not None:
                    raise self._closed
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VmiError("DEADLINE_EXCEEDED", "no answer within %gs" % timeout)
                self._cond.wait(left)

    def _read_loop(self):
        end = None
        while end is None:
            try:
                frame = read_frame(self._sock, READ_LIMIT, keep_going=lambda: not self._closing)
            except (OSError, EOFError) as e:
                end = _unavailable("reading from the facilities relay: %s" % e)
                break
            except ValueError as e:
                end = VmiError("INTERNAL", "the facilities relay sent %s" % e)
                break
            if frame is None:
                end = _unavailable("the facilities relay closed the connection")
                break
            with self._cond:
                try:
                    self._take(frame)
                except VmiError as e:
                    if not self._closing:
                        sys.stderr.write("furnace facilities: %s\n" % e)
                    self._refused = e
                    self._closed = e
                    self._cond.notify_all()
                    return
                self._cond.notify_all()
        with self._cond:
            if self._closed is None:
                self._closed = end
            self._cond.notify_all()

    def _take(self, frame):
        """Files one frame from the relay (under the lock). A VmiError ends the session."""
        which = frame.WhichOneof("body")
        body = getattr(frame, which)
        if which == "relay_status":
            self._status = body
        elif which == "welcome":
            try:
                self._downstream = self._handshake.finish(body.noise)
            except _noise.NoiseError as e:
                raise VmiError("NOT_PERMITTED", "refusing the backend: %s" % e)
        elif which == "refused":
            raise VmiError("NOT_PERMITTED", "the backend refused this app: %s" % body.reason)
        elif which == "accepted":
            self._last_accepted = max(self._last_accepted, body.seq)
            if self._sent.pop(body.seq, None) is not None:
                self._accepted[body.seq] = None
        elif which == "delivered":
            self._delivered = max(self._delivered, body.seq)
        elif which == "failed":
            code = _proto.enum_name(_proto.ErrorCodeEnum, "ERROR_CODE_", body.code) or "INTERNAL"
            error = VmiError(code, body.message)
            kind = self._sent.pop(body.seq, None)
            if kind == KIND_NOTIFY:
                self._accepted[body.seq] = error
            elif kind == KIND_REQUEST:
                self._replies[body.seq] = error
            elif body.seq == 0 and not self._closing:  # a frame the relay could not take
                sys.stderr.write("furnace facilities: the relay: [%s] %s\n" % (code, body.message))
        elif which == "sealed":
            self._take_sealed(body)
        elif which == "storage_result":
            if body.WhichOneof("result") is not None:
                self._storage[body.id] = body

    def _take_sealed(self, s):
        if self._downstream is None:
            raise VmiError("NOT_PERMITTED", "a message came before the backend's Welcome")
        try:
            data = self._downstream.open(s.seq, s.kind, s.request_id, s.ciphertext)
        except _noise.NoiseError as e:
            raise VmiError("NOT_PERMITTED", "a backend message: %s" % e)
        if s.kind == KIND_REPLY:
            if self._sent.pop(s.request_id, None) is not None:
                self._replies[s.request_id] = data
        elif s.kind in (KIND_DIRECTED, KIND_BROADCAST):
            if len(self._messages) >= INBOX_LIMIT:
                self._messages.popleft()
                self.dropped_messages += 1
            self._messages.append(Message("directed" if s.kind == KIND_DIRECTED else "broadcast", data))


class Storage(object):
    """The app's storage (docs/facilities.md, "Storage"): keys are 1-128 bytes
    of ``[A-Za-z0-9._-]``, not starting with a dot."""

    def __init__(self, fac):
        self._fac = fac

    def put(self, key, value):
        """Stores ``value`` under ``key``, atomically; over the quota it fails
        with LIMIT_EXCEEDED and the old value stays."""
        self._fac._storage_call(put=_Put(key=key, value=_bytes(value)))

    def get(self, key):
        """The value under ``key`` (bytes); NOT_FOUND if there is none."""
        which, result = self._fac._storage_call(get=key)
        if which != "value":
            raise VmiError("INTERNAL", "the relay answered get with no value")
        return result.value

    def delete(self, key):
        self._fac._storage_call(delete=key)

    def keys(self):
        which, result = self._fac._storage_call(keys=_Keys())
        if which != "keys":
            raise VmiError("INTERNAL", "the relay answered keys with no list")
        return list(result.keys.keys)
