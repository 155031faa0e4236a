"""Unit tests of the Python SDK's wire layer against an in-process fake server.

Run: python3 -m unittest discover -s api/python/tests
"""

import contextlib
import io
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import furnace_vmi  # noqa: E402
from furnace_vmi import Batch, Vmi, VmiError, v1  # noqa: E402
from furnace_vmi import __main__ as cli  # noqa: E402
from furnace_vmi._proto import ttrpc  # noqa: E402

HEADER = struct.Struct(">IIBB")

# What a handler returns to make the fake drop the connection without replying.
CLOSE = object()


class Status(object):
    """A failed reply: gRPC ``code``, ``message`` and optional typed ``error`` (a v1.Error)."""

    def __init__(self, code, message, error=None):
        self.code, self.message, self.error = code, message, error


class Raw(object):
    """A frame sent as is: ``header`` fields and ``payload`` bytes."""

    def __init__(self, length, stream_id, kind, payload=b""):
        self.length, self.stream_id, self.kind, self.payload = length, stream_id, kind, payload


class FakeTtrpcServer(object):
    """A minimal ttrpc server on a temporary unix socket, for unit-testing the
    SDK's framing, error decoding and transport failures only. It is NOT the
    sidecar and checks nothing about the VMI calls themselves: each request is
    passed to ``handler(service, method, payload)``, which returns a reply
    message, a ``Status``, a ``Raw`` frame or ``CLOSE``. Its framing is written
    independently of the SDK's (struct and a plain recv loop), sharing only the
    message descriptors."""

    def __init__(self, handler, dribble=False):
        self.handler = handler
        self.dribble = dribble  # send replies a few bytes at a time
        self.requests = []  # (stream_id, service, method, payload)
        self.errors = []  # exceptions raised by the handler (its assertions)
        self.dir = tempfile.mkdtemp(prefix="furnace-vmi-test-")
        self.path = os.path.join(self.dir, "vmi.sock")
        self._stop = False
        self._connections = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self._thread.join(5)
        self._listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._connections.append(conn)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv(conn, n):
        chunks, got = [], 0
        while got < n:
            chunk = conn.recv(n - got)
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _send(self, conn, data):
        if not self.dribble:
            conn.sendall(data)
            return
        for i in range(0, len(data), 3):
            conn.sendall(data[i : i + 3])
            time.sleep(0.001)

    def _connection(self, conn):
        try:
            while True:
                header = self._recv(conn, HEADER.size)
                if header is None:
                    return
                length, stream_id, kind, flags = HEADER.unpack(header)
                payload = self._recv(conn, length) if length else b""
                if payload is None:
                    return
                request = ttrpc.Request.FromString(payload)
                self.requests.append((stream_id, request.service, request.method, request.payload))
                try:
                    action = self.handler(request.service, request.method, request.payload)
                except Exception as e:  # reported by the test, not lost in this thread
                    self.errors.append(e)
                    action = CLOSE
                if action is CLOSE:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, Raw):
                    self._send(conn, HEADER.pack(action.length, action.stream_id, action.kind, 0) + action.payload)
                    continue
                response = ttrpc.Response()
                if isinstance(action, Status):
                    response.status.code = action.code
                    response.status.message = action.message
                    if action.error is not None:
                        detail = response.status.details.add()
                        detail.type_url = "type.googleapis.com/furnace.vmi.v1.Error"
                        detail.value = action.error.SerializeToString()
                else:
                    response.payload = action.SerializeToString()
                body = response.SerializeToString()
                self._send(conn, HEADER.pack(len(body), stream_id, 2, 0) + body)
        except OSError:
            return


def processes_handler(service, method, payload):
    if (service, method) == ("furnace.vmi.v1.Vmi", "ListProcesses"):
        return v1.ProcessList(
            processes=[
                v1.Process(pid=1, ppid=0, name="init", uid=0, dtb=0x1234000, task=0xFFFF888000001000),
                v1.Process(pid=42, ppid=1, name="sh", uid=1000, dtb=0x5678000, task=0xFFFF888000002000),
            ]
        )
    if method == "ReadVirtual":
        request = v1.ReadVirtualRequest.FromString(payload)
        pid = request.space.pid if request.HasField("space") else 0
        return v1.Bytes(data=b"%d:%x:%d" % (pid, request.address, request.size))
    return Status(12, "unknown method %s/%s" % (service, method))


class WireTest(unittest.TestCase):
    def serve(self, handler, **kwargs):
        server = FakeTtrpcServer(handler, **kwargs)
        self.addCleanup(server.close)
        self.addCleanup(lambda: self.assertEqual(server.errors, [], "the fake server's handler failed"))
        return server

    def test_successful_calls_use_odd_increasing_stream_ids(self):
        server = self.serve(processes_handler)
        with Vmi(server.path, timeout=5) as vmi:
            processes = vmi.processes()
            self.assertEqual([(p.pid, p.name) for p in processes], [(1, "init"), (42, "sh")])
            self.assertEqual(processes[0].task, 0xFFFF888000001000)
            self.assertEqual(vmi.read_virtual(0, 0xFFFF0000, 16), b"0:ffff0000:16")
            self.assertEqual(vmi.read_virtual(42, 0x400000, 8), b"42:400000:8")
        self.assertTrue(vmi.closed)
        self.assertEqual([r[0] for r in server.requests], [1, 3, 5])
        self.assertEqual(server.requests[0][1:3], ("furnace.vmi.v1.Vmi", "ListProcesses"))
        # pid 0 is the kernel's address space: no `space` on the wire.
        self.assertFalse(v1.ReadVirtualRequest.FromString(server.requests[1][3]).HasField("space"))

    def test_replies_arriving_a_few_bytes_at_a_time(self):
        server = self.serve(processes_handler, dribble=True)
        with Vmi(server.path, timeout=5) as vmi:
            self.assertEqual(len(vmi.processes()), 2)

    def test_typed_error_round_trip_keeps_the_connection(self):
        def handler(service, method, payload):
            if method == "WritePhysical":
                error = v1.Error(code=1, message="write needs the write permission")
                return Status(7, "[NOT_PERMITTED] write needs the write permission", error)
            return processes_handler(service, method, payload)

        server = self.serve(handler)
        with Vmi(server.path, timeout=5) as vmi:
            with self.assertRaises(VmiError) as caught:
                vmi.write_physical(0x1000, b"\x90")
            e = caught.exception
            self.assertEqual((e.code, e.message, e.call_index), ("NOT_PERMITTED", "write needs the write permission", None))
            self.assertEqual(str(e), "[NOT_PERMITTED] write needs the write permission")
            self.assertEqual(len(vmi.processes()), 2)  # still usable

    def test_foreign_status_maps_by_grpc_code(self):
        codes = {"A": (12, "UNSUPPORTED"), "B": (14, "GUEST_GONE"), "C": (2, "INTERNAL"), "D": (8, "LIMIT_EXCEEDED")}
        server = self.serve(lambda service, method, payload: Status(codes[method][0], "no luck " + method))
        with Vmi(server.path, timeout=5) as vmi:
            for method, (_, expected) in sorted(codes.items()):
                with self.assertRaises(VmiError) as caught:
                    vmi._call(method, v1.Empty(), v1.Empty)
                self.assertEqual((caught.exception.code, caught.exception.message), (expected, "no luck " + method))

    def test_closed_connection_is_unavailable(self):
        server = self.serve(lambda service, method, payload: CLOSE)
        vmi = Vmi(server.path, timeout=5)
        self.addCleanup(vmi.close)
        with self.assertRaises(VmiError) as caught:
            vmi.info()
        self.assertEqual(caught.exception.code, "UNAVAILABLE")
        with self.assertRaises(VmiError) as caught:  # and stays closed: no silent reconnect
            vmi.info()
        self.assertEqual(caught.exception.code, "UNAVAILABLE")
        self.assertEqual(len(server.requests), 1)

    def test_no_server_is_unavailable(self):
        with self.assertRaises(VmiError) as caught:
            Vmi(os.path.join(tempfile.gettempdir(), "furnace-vmi-no-such.sock"))
        self.assertEqual(caught.exception.code, "UNAVAILABLE")

    def test_timeout_is_unavailable(self):
        release = threading.Event()

        def handler(service, method, payload):
            release.wait(5)
            return v1.Empty()

        server = self.serve(handler)
        self.addCleanup(release.set)
        with Vmi(server.path, timeout=0.2) as vmi:
            started = time.monotonic()
            with self.assertRaises(VmiError) as caught:
                vmi.resume(7)
            self.assertLess(time.monotonic() - started, 3)
            self.assertEqual(caught.exception.code, "UNAVAILABLE")
            self.assertIn("timed out", caught.exception.message)

    def test_large_reply(self):
        blob = os.urandom(3 << 20)
        server = self.serve(lambda service, method, payload: v1.Bytes(data=blob))
        with Vmi(server.path, timeout=10) as vmi:
            for _ in range(2):
                self.assertEqual(vmi.read_physical(0, len(blob)), blob)

    def test_oversized_or_foreign_frames_are_refused(self):
        server = self.serve(lambda service, method, payload: Raw((4 << 20) + 1, 1, 2))
        with Vmi(server.path, timeout=5) as vmi:
            with self.assertRaises(VmiError) as caught:
                vmi.info()
            self.assertEqual(caught.exception.code, "INTERNAL")
            self.assertTrue(vmi.closed)
        server = self.serve(lambda service, method, payload: Raw(0, 99, 2))
        with Vmi(server.path, timeout=5) as vmi:
            with self.assertRaises(VmiError) as caught:
                vmi.info()
            self.assertEqual(caught.exception.code, "INTERNAL")
            self.assertIn("stream 99", caught.exception.message)

    def test_oversized_request_is_refused_before_sending(self):
        server = self.serve(lambda service, method, payload: v1.Empty())
        with Vmi(server.path, timeout=5) as vmi:
            with self.assertRaises(VmiError) as caught:
                vmi.write_physical(0, bytes(4 << 20))
            self.assertEqual(caught.exception.code, "LIMIT_EXCEEDED")
            vmi.write_physical(0, b"ok")
        self.assertEqual(len(server.requests), 1)

    def test_bad_arguments_are_invalid_argument(self):
        server = self.serve(lambda service, method, payload: v1.Empty())
        with Vmi(server.path, timeout=5) as vmi:
            for call in (lambda: vmi.read_virtual(-1, 0, 8), lambda: vmi.read_physical(1 << 64, 8)):
                with self.assertRaises(VmiError) as caught:
                    call()
                self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
        with self.assertRaises(VmiError):
            Batch().link(0, 0, "address", "add")  # no call 0
        self.assertEqual(server.requests, [])

    def test_batch_links_results_and_error(self):
        def handler(service, method, payload):
            request = v1.BatchRequest.FromString(payload)
            self.assertEqual(len(request.calls), 3)
            self.assertEqual(request.calls[1].WhichOneof("op"), "read_integer")
            link = request.calls[1].links[0]
            self.assertEqual((link.source, link.target, link.op), (0, furnace_vmi.LINK_ADDRESS, furnace_vmi.LINK_ADD))
            return v1.BatchResponse(
                results=[
                    v1.CallResult(symbol=v1.Symbol(name="init_task", address=0xFFFFFFFF82000000)),
                    v1.CallResult(integer=0xFFFF888000003000),
                ],
                error=v1.Error(code=2, message="unmapped 0xffff888000003000", call_index=2),
            )

        server = self.serve(handler)
        batch = Batch()
        head = batch.symbol_address("init_task")
        nxt = batch.add_address(batch.read_u64(0, 0x98), head)
        name = batch.read_string(0, 0x10, 16)
        batch.link(name, nxt, "address", "add")
        self.assertEqual((head, nxt, name, len(batch)), (0, 1, 2, 3))
        with Vmi(server.path, timeout=5) as vmi:
            results = vmi.batch(batch)
        self.assertEqual(results.integer(head), 0xFFFFFFFF82000000)
        self.assertEqual(results.integer(nxt), 0xFFFF888000003000)
        self.assertIsNone(results.text(name))
        self.assertIsNone(results.data(nxt))
        self.assertEqual((results.error.code, results.error.call_index), ("BAD_ADDRESS", 2))
        with self.assertRaises(VmiError):
            results.raise_error()

    def test_admin_register_sends_permission_enums(self):
        def handler(service, method, payload):
            self.assertEqual(service, "furnace.vmi.v1.Admin")
            request = v1.RegisterRequest.FromString(payload)
            self.assertEqual(list(request.permissions), [1, 3])
            self.assertEqual((request.app_id, request.uid, request.gid), ("app1", 100000, 100000))
            return v1.RegisterResponse(socket_path="/run/furnace/apps/app1.sock")

        server = self.serve(handler)
        with furnace_vmi.Admin(server.path, timeout=5) as admin:
            self.assertEqual(admin.register("app1", ["read", "pause"], 100000, 100000), "/run/furnace/apps/app1.sock")
            with self.assertRaises(VmiError) as caught:
                admin.register("app1", ["fly"])
            self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
        self.assertEqual(furnace_vmi.permission_names([1, 2]), ["read", "write"])

    def test_cli_ps(self):
        server = self.serve(processes_handler)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli.main(["ps", "--socket", server.path, "--json"]), 0)
        listed = json.loads(out.getvalue())
        self.assertEqual(listed[1], {"pid": 42, "ppid": 1, "name": "sh", "uid": 1000, "dtb": 0x5678000, "task": 0xFFFF888000002000})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli.main(["ps", "--socket", server.path]), 0)
        self.assertIn("0xffff888000002000", out.getvalue())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(cli.main(["ps", "--socket", server.path + ".missing"]), 1)
        self.assertIn("UNAVAILABLE", err.getvalue())


if __name__ == "__main__":
    unittest.main()
