"""The ttrpc wire protocol (docs/protocol.md): a 10-byte big-endian header
(payload length u32, stream id u32, type u8, flags u8) and a protobuf payload,
``ttrpc.Request`` from the client, ``ttrpc.Response`` back. Clients number
their streams with odd ids, one per call."""

import socket
import struct
import threading

from . import _proto
from .errors import VmiError

HEADER = struct.Struct(">IIBB")
HEADER_LEN = HEADER.size  # 10
#: The largest payload either side accepts, as in ttrpc.
MAX_PAYLOAD = 4 << 20
TYPE_REQUEST = 1
TYPE_RESPONSE = 2

VMI_SERVICE = "furnace.vmi.v1.Vmi"
ADMIN_SERVICE = "furnace.vmi.v1.Admin"


def encode_frame(stream_id, kind, payload):
    """Header and payload as one bytes object."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes exceeds the %d-byte frame limit" % (len(payload), MAX_PAYLOAD))
    return HEADER.pack(len(payload), stream_id, kind, 0) + bytes(payload)


def recv_exact(sock, view):
    """Fills ``view`` (a writable memoryview) from ``sock``; returns how many
    bytes it got before end of stream (``len(view)`` when complete). Reads
    straight into the buffer, so a large reply is never copied piecewise."""
    got = 0
    total = len(view)
    while got < total:
        n = sock.recv_into(view[got:], total - got)
        if n == 0:
            break
        got += n
    return got


def read_frame(sock):
    """Reads one frame: ``(stream_id, kind, flags, payload)`` with payload a
    bytearray, or None at a clean end of stream. Raises ValueError for a
    frame over the limit and EOFError for a truncated one."""
    header = bytearray(HEADER_LEN)
    got = recv_exact(sock, memoryview(header))
    if got == 0:
        return None
    if got < HEADER_LEN:
        raise EOFError("the stream ended inside a frame header")
    length, stream_id, kind, flags = HEADER.unpack(header)
    if length > MAX_PAYLOAD:
        raise ValueError("frame of %d bytes exceeds the %d-byte limit" % (length, MAX_PAYLOAD))
    payload = bytearray(length)
    if recv_exact(sock, memoryview(payload)) < length:
        raise EOFError("the stream ended inside a %d-byte frame" % length)
    return stream_id, kind, flags, payload


class Connection(object):
    """One connection to a sidecar socket; calls on it are sequential (a lock
    serialises threads). A transport failure closes it: later calls fail with
    UNAVAILABLE rather than reading a stale reply. It never reconnects by
    itself, since the guest's pause leases end with the connection."""

    def __init__(self, path, timeout):
        self.path = str(path)
        self._lock = threading.Lock()
        self._next_stream_id = 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise VmiError("UNAVAILABLE", "connecting to the sidecar at %s: %s" % (self.path, _describe(e)))
        self._sock = sock

    def close(self):
        with self._lock:
            self._close()

    @property
    def closed(self):
        return self._sock is None

    def _close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _broken(self, context, error):
        self._close()
        return VmiError("UNAVAILABLE", "%s: %s" % (context, _describe(error)))

    def call(self, service, method, payload):
        """Sends one request and returns the reply's payload (bytes), or
        raises VmiError with the sidecar's typed error."""
        request = _proto.ttrpc.Request(service=service, method=method, payload=payload).SerializeToString()
        if len(request) > MAX_PAYLOAD:
            raise VmiError(
                "LIMIT_EXCEEDED",
                "%s request of %d bytes exceeds the %d-byte frame limit" % (method, len(request), MAX_PAYLOAD),
            )
        with self._lock:
            sock = self._sock
            if sock is None:
                raise VmiError("UNAVAILABLE", "the connection to the sidecar at %s is closed" % self.path)
            stream_id = self._next_stream_id
            self._next_stream_id = (stream_id + 2) & 0xFFFFFFFF
            try:
                sock.sendall(encode_frame(stream_id, TYPE_REQUEST, request))
            except OSError as e:
                raise self._broken("sending to the sidecar", e)
            try:
                frame = read_frame(sock)
            except (OSError, EOFError) as e:
                raise self._broken("reading the sidecar's reply", e)
            except ValueError as e:
                self._close()
                raise VmiError("INTERNAL", "unexpected frame from the sidecar: %s" % e)
            if frame is None:
                self._close()
                raise VmiError("UNAVAILABLE", "the sidecar closed the connection")
            got_id, kind, _flags, body = frame
            if kind != TYPE_RESPONSE or got_id != stream_id:
                self._close()
                raise VmiError(
                    "INTERNAL",
                    "unexpected frame from the sidecar: type %d on stream %d (waiting for stream %d)"
                    % (kind, got_id, stream_id),
                )
        try:
            response = _proto.ttrpc.Response.FromString(bytes(body))
        except Exception as e:
            raise VmiError("INTERNAL", "undecodable reply: %s" % e)
        if response.HasField("status") and response.status.code != 0:
            raise VmiError.from_status(response.status)
        return response.payload


def _describe(error):
    if isinstance(error, socket.timeout):
        return "timed out"
    return str(error) or type(error).__name__
