"""The tenant's side of facilities (docs/facilities.md, "Backend library"):
the Python twin of ``furnace_fac::backend::Backend`` (facilities/src/backend.rs).

It accepts relay connections, admits only the app keys it allows, hands each
message to one callback and answers requests with what the callback returns;
sends to one app or to all of them; runs timers.

    from furnace_vmi.backend import Backend

    def on_message(app, kind, data):       # kind: "notify" or "request"
        print(app, kind, data)
        return b"ok" if kind == "request" else None

    backend = Backend("be.key", allow={"alpha": "alpha.pub"}, on_message=on_message)
    backend.every(60, lambda b: b.broadcast(b"tick"))
    backend.serve_forever("0.0.0.0", 7000)

A directed message goes to the sessions authenticated with that app's key and
to nothing else. Errors are :class:`furnace_vmi.VmiError`s.
"""

import queue
import socket
import sys
import threading

from . import _noise, _proto
from .errors import VmiError
from .facilities import (
    FRAME_OVERHEAD,
    KIND_BROADCAST,
    KIND_DIRECTED,
    KIND_NOTIFY,
    KIND_REPLY,
    KIND_REQUEST,
    _bytes,
    _private_arg,
    _public_arg,
    encode_frame,
    encode_key,
    read_frame,
)

_Sealed = _proto.message("furnace.fac.v1.Sealed")
_Delivered = _proto.message("furnace.fac.v1.Delivered")
_Refused = _proto.message("furnace.fac.v1.Refused")
_Welcome = _proto.message("furnace.fac.v1.Welcome")
#: How long a relay has to send its Hello after connecting, in seconds.
HELLO_TIMEOUT = 30.0
_STOP = object()


def _log_stderr(line):
    sys.stderr.write("furnace backend: %s\n" % line)
    sys.stderr.flush()


class _Session(object):
    """One relay connection that opened a session for ``app``."""

    def __init__(self, app, sock, down):
        self.app = app
        self.sock = sock
        self.down = down
        self.next_seq = 1
        self.out = queue.Queue()
        self.lock = threading.Lock()

    def send_sealed(self, kind, request_id, data):
        """Seals and queues one message (under ``lock``, so seq order is send order)."""
        with self.lock:
            seq = self.next_seq
            self.next_seq += 1
            ciphertext = self.down.seal(seq, kind, request_id, data)
            sealed = _Sealed(seq=seq, kind=kind, request_id=request_id, ciphertext=ciphertext)
            self.out.put(encode_frame(sealed=sealed))

    def write_loop(self):
        while True:
            frame = self.out.get()
            if frame is _STOP:
                return
            try:
                self.sock.sendall(frame)
            except OSError:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return


class Backend(object):
    """``key``: the backend's private key (32 bytes or a ``.key`` path);
    ``allow``: ``{app name: public key}`` (32 bytes, the ``.pub`` line or its
    path); ``on_message(app, kind, data)``, ``kind`` "notify" or "request",
    returns a request's reply (bytes; None is an empty reply). ``log`` takes
    one line (default: stderr)."""

    def __init__(self, key, allow, on_message, max_message_bytes=64 << 20, log=None):
        self._key = _private_arg(key)
        self._allow = {}
        for name, public in dict(allow).items():
            self._allow[_public_arg(public)] = str(name)
        self._on_message = on_message
        self._max_message_bytes = max_message_bytes
        self._log = log or _log_stderr
        self._lock = threading.Lock()
        self._sessions = {}
        self._next_session = 1
        # Per Hello: the last sequence delivered, so a relay resending after
        # a reconnect delivers nothing twice.
        self._delivered = {}
        self._listeners = []
        self._sockets = set()
        self._threads = []
        self._stopped = threading.Event()

    # --- serving ------------------------------------------------------------

    def serve(self, host="127.0.0.1", port=0):
        """Listens on ``host:port`` and serves in the background; returns the
        bound ``(host, port)`` (port 0 picks a free one)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
            listener.listen(64)
        except OSError as e:
            listener.close()
            raise VmiError("UNAVAILABLE", "listening on %s:%s: %s" % (host, port, e))
        with self._lock:
            self._listeners.append(listener)
        self._spawn(self._accept_loop, listener, name="furnace-backend-accept")
        return listener.getsockname()[:2]

    def serve_forever(self, host="127.0.0.1", port=0):
        """:meth:`serve`, then blocks until :meth:`close` (or Ctrl-C, which closes)."""
        self.serve(host, port)
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            self.close()

    def close(self):
        """Stops listening, ends every session and timer."""
        self._stopped.set()
        with self._lock:
            listeners, self._listeners = self._listeners, []
            sockets = list(self._sockets)
        for s in listeners + sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for s in listeners:
            s.close()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- sending ------------------------------------------------------------

    def notify(self, app, data):
        """Sends ``data`` to every open session of ``app``; returns how many.
        NOT_FOUND: not on the allow list; UNAVAILABLE: no open session."""
        if app not in self._allow.values():
            raise VmiError("NOT_FOUND", "app %s is not on the allow list" % app)
        sent = self._send(KIND_DIRECTED, _bytes(data), lambda a: a == app)
        if sent == 0:
            raise VmiError("UNAVAILABLE", "app %s has no open session" % app)
        return sent

    def broadcast(self, data):
        """Sends ``data`` to every open session; returns how many."""
        return self._send(KIND_BROADCAST, _bytes(data), lambda a: True)

    def connected(self):
        """Names of the apps with an open session."""
        with self._lock:
            return sorted(set(s.app for s in self._sessions.values()))

    def every(self, seconds, tick):
        """Calls ``tick(backend)`` every ``seconds`` until :meth:`close`."""
        seconds = float(seconds)
        if not seconds > 0:
            raise VmiError("INVALID_ARGUMENT", "a period of %r seconds" % seconds)

        def run():
            while not self._stopped.wait(seconds):
                try:
                    tick(self)
                except Exception as e:  # a failing tick does not stop the timer
                    self._log("a timer failed: %r" % (e,))

        self._spawn(run, name="furnace-backend-timer")

    def _send(self, kind, data, to):
        with self._lock:
            targets = [s for s in self._sessions.values() if to(s.app)]
        for s in targets:
            try:
                s.send_sealed(kind, 0, data)
            except _noise.NoiseError as e:
                raise VmiError("LIMIT_EXCEEDED", "the message could not be sealed: %s" % e)
        return len(targets)

    # --- one relay connection -------------------------------------------------

    def _spawn(self, target, *args, **kw):
        t = threading.Thread(target=target, args=args, name=kw.get("name"), daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self, listener):
        while not self._stopped.is_set():
            try:
                sock, peer = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopped.is_set():
                    sock.close()
                    return
                self._sockets.add(sock)
            self._spawn(self._connection, sock, peer, name="furnace-backend-relay")

    def _connection(self, sock, peer):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._session(sock)
        except Exception as e:
            self._log("relay %s:%s: %s" % (peer[0], peer[1], e))
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def _session(self, sock):
        limit = _noise.sealed_len(self._max_message_bytes) + FRAME_OVERHEAD
        sock.settimeout(HELLO_TIMEOUT)
        frame = read_frame(sock, limit)
        if frame is None:
            return
        if frame.WhichOneof("body") != "hello":
            raise ValueError("the first frame was not a Hello but a %s" % frame.WhichOneof("body"))
        sock.settimeout(None)
        hello = bytes(frame.hello.noise)
        try:
            handshake = _noise.BackendHandshake(self._key, hello)
            app = self._allow.get(handshake.app)
            if app is None:
                reason = "app key %s is not on the allow list" % encode_key(handshake.app)
        except _noise.NoiseError as e:
            app, reason = None, "%s (is furnace.dev/backend-key this backend's public key?)" % e
        if app is None:
            try:
                sock.sendall(encode_frame(refused=_Refused(reason=reason)))
            except OSError:
                pass
            raise ValueError("refused a session: %s" % reason)
        welcome, down = handshake.welcome()
        sock.sendall(encode_frame(welcome=_Welcome(noise=welcome)))
        self._log("app %s: session opened" % app)
        session = _Session(app, sock, down)
        with self._lock:
            session_id = self._next_session
            self._next_session += 1
            self._sessions[session_id] = session
        writer = threading.Thread(target=session.write_loop, name="furnace-backend-writer", daemon=True)
        writer.start()
        try:
            self._receive(session, hello, handshake.upstream, limit)
        finally:
            with self._lock:
                self._sessions.pop(session_id, None)
            session.out.put(_STOP)
            writer.join(5.0)
            self._log("app %s: session closed" % app)

    def _reply_bytes(self, app, reply):
        if reply is None:
            return b""
        if isinstance(reply, str):
            return reply.encode("utf-8")
        if isinstance(reply, (bytes, bytearray, memoryview)):
            return bytes(reply)
        self._log("app %s: the callback returned a %s, not bytes; replying empty" % (app, type(reply).__name__))
        return b""

    def _receive(self, session, hello, up, limit):
        app = session.app
        while True:
            frame = read_frame(session.sock, limit)
            if frame is None:
                return
            if frame.WhichOneof("body") != "sealed":
                continue
            s = frame.sealed
            with self._lock:
                done = self._delivered.get(hello, 0)
            if s.seq <= done:
                session.out.put(encode_frame(delivered=_Delivered(seq=done)))
                continue
            try:
                data = up.open(s.seq, s.kind, s.request_id, s.ciphertext)
            except _noise.NoiseError as e:
                raise ValueError("app %s: %s; closing the session" % (app, e))
            if s.kind not in (KIND_NOTIFY, KIND_REQUEST):
                raise ValueError("app %s sent a message of kind %d" % (app, s.kind))
            kind = "request" if s.kind == KIND_REQUEST else "notify"
            try:
                reply = self._on_message(app, kind, data)
            except Exception as e:
                self._log("app %s: the callback failed on a %s: %r" % (app, kind, e))
                reply = None
            with self._lock:
                self._delivered[hello] = s.seq
            if s.kind == KIND_REQUEST:
                session.send_sealed(KIND_REPLY, s.seq, self._reply_bytes(app, reply))
            session.out.put(encode_frame(delivered=_Delivered(seq=s.seq)))
