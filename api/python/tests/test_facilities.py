"""Facilities in Python (docs/facilities.md): the Noise layer against the
published test vectors, and the SDK and the backend library against the
real Rust relay and the real `furnace backend`, both ways.

The Rust binaries come from $FURNACE_BIN_DIR or <repo>/target/release
(`cargo build --release -p furnace-fac -p furnace`); without them those
tests skip. Run: python3 -m unittest discover -s api/python/tests
"""

import json
import os
import queue
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from furnace_vmi import VmiError, _noise  # noqa: E402
from furnace_vmi import facilities as fac  # noqa: E402
from furnace_vmi.backend import Backend  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
BIN_DIR = os.environ.get("FURNACE_BIN_DIR") or os.path.join(REPO, "target", "release")
RELAY = os.path.join(BIN_DIR, "furnace-fac-relay")
FURNACE = os.path.join(BIN_DIR, "furnace")
HAVE_BINARIES = all(os.access(p, os.X_OK) for p in (RELAY, FURNACE))
NO_BINARIES = "no furnace-fac-relay and furnace in %s: build them (cargo build --release -p furnace-fac -p furnace)"
needs_binaries = unittest.skipUnless(HAVE_BINARIES, NO_BINARIES % BIN_DIR + " or set FURNACE_BIN_DIR")
WAIT = 10.0
H = bytes.fromhex
P = fac._proto.message
Hello, Sealed, Welcome = P("furnace.fac.v1.Hello"), P("furnace.fac.v1.Sealed"), P("furnace.fac.v1.Welcome")


def raises(test, code, call, *args):
    """Asserts ``call(*args)`` fails with VmiError ``code``; returns the error."""
    with test.assertRaises(VmiError) as e:
        call(*args)
    test.assertEqual(e.exception.code, code, e.exception)
    return e.exception


class TempDir(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fac-py-")
        self.addCleanup(subprocess.call, ["rm", "-rf", self.dir])

    def path(self, name):
        return os.path.join(self.dir, name)


# From snow's tests/vectors/cacophony.txt (the same keys and prologue for
# both): the handshake and the first two transport messages of each pattern.
V = dict(
    prologue=H("4a6f686e2047616c74"),
    init_static=H("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"),
    init_ephemeral=H("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"),
    resp_static=H("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"),
    resp_public=H("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62"),
    payloads=[H("4c756477696720766f6e204d69736573"), H("4d757272617920526f746862617264"), H("462e20412e20486179656b")],
)
VECTORS = {
    "X": ("f781a940343a817adc2483932dd05e7036171cdcf1d0a0bf0cd869f7aa557c6a", [
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79448bc3b729d16d3944f1bfae9fa98e0d306234bfad"
        "c44880f99a69c6e55b6c1458e9c9dacab3f29aac44b435c57dc436d0830ae461a4479228789a38085be55b13e0128564987994de"
        "842e73dd0a5c328b",
        "aee89720731c98ccf15f4495ae3f6f2f7ed8e2164a1494c9e785b076e69cfc",
        "c88787701dc4365fe9dee7c0f23d91afdc214a459eadbc9f1d0220"]),
    "K": ("5bc4f2a41423bc4ca48bfa47151056389a9e0a19087aba0d73152239b0febb6a", [
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79443ab57eb07c96791ebddff95c2ed2ccfe412d8727"
        "0c753c0a5b5fe46164087647",
        "3e7b4d83fa0cca62cc0b6d202da416c0b59289e518982742851e534f1916f8",
        "d52fe3eee4de396b592afea7eb632020587aa4384200ed9bca9585"]),
}

INITIATOR = (V["init_static"], V["resp_public"], V["prologue"], V["payloads"][0], V["init_ephemeral"])


class NoiseVectors(unittest.TestCase):
    def check(self, pattern, message, h, key, responded):
        want_hash, ciphertexts = VECTORS[pattern]
        self.assertEqual((message.hex(), h.hex()), (ciphertexts[0], want_hash))
        self.assertEqual(responded, (V["payloads"][0], h, key))
        for n, (payload, ciphertext) in enumerate(zip(V["payloads"][1:], ciphertexts[1:])):
            self.assertEqual(_noise._encrypt(key, n, b"", payload).hex(), ciphertext, "transport: nonce n, no ad")

    def test_x_matches_the_cacophony_vector(self):
        m, h, key = _noise.x_initiate(*INITIATOR)
        rs, payload, h2, key2 = _noise.x_respond(V["resp_static"], V["prologue"], m)
        self.assertEqual(rs, _noise.public_of(V["init_static"]))
        self.check("X", m, h, key, (payload, h2, key2))

    def test_k_matches_the_cacophony_vector(self):
        m, h, key = _noise.k_initiate(*INITIATOR)
        init_public = _noise.public_of(V["init_static"])
        self.check("K", m, h, key, _noise.k_respond(V["resp_static"], init_public, V["prologue"], m))


def session():
    app, backend = _noise.generate_private(), _noise.generate_private()
    hs = _noise.AppHandshake(app, _noise.public_of(backend))
    be = _noise.BackendHandshake(backend, hs.hello)
    welcome, be_down = be.welcome()
    return app, backend, hs, be, hs.finish(welcome), be_down


class Sealing(unittest.TestCase):
    def test_both_directions_round_trip_any_size(self):
        _, _, hs, be, app_down, be_down = session()
        self.assertEqual(len(hs.hello), 96)
        for n in (0, 1, _noise.CHUNK_PLAINTEXT - 17, _noise.CHUNK_PLAINTEXT, 3 * 65535 + 7, 1 << 20):
            data = bytes((i * 7) & 0xFF for i in range(n))
            c = hs.upstream.seal(9, fac.KIND_REQUEST, 4, data)
            self.assertEqual(len(c), _noise.sealed_len(n))
            self.assertEqual(be.upstream.open(9, fac.KIND_REQUEST, 4, c), data, n)
            c = be_down.seal(2, fac.KIND_REPLY, 9, data)
            self.assertEqual(app_down.open(2, fac.KIND_REPLY, 9, c), data)

    def test_relabelled_reordered_truncated_or_tampered_messages_fail(self):
        _, _, hs, be, _, _ = session()
        c = hs.upstream.seal(3, fac.KIND_NOTIFY, 0, b"\x05" * 100000)
        flipped = bytearray(c)
        flipped[65535 + 10] ^= 1
        cases = [(4, 1, 0, c), (3, 2, 0, c), (3, 1, 1, c), (3, 1, 0, c[:65535]), (3, 1, 0, flipped), (3, 1, 0, b"")]
        for seq, kind, rid, ciphertext in cases:  # another seq, kind, request id; truncated; tampered; empty
            with self.assertRaises(_noise.NoiseError, msg=repr((seq, kind, rid, len(ciphertext)))):
                be.upstream.open(seq, kind, rid, ciphertext)

    def test_a_hello_to_another_backend_and_a_welcome_from_one_fail(self):
        app, backend, hs, _, _, _ = session()
        impostor = _noise.generate_private()
        with self.assertRaises(_noise.NoiseError):
            _noise.BackendHandshake(impostor, hs.hello)
        other = _noise.AppHandshake(app, _noise.public_of(impostor))
        forged, _ = _noise.BackendHandshake(impostor, other.hello).welcome()
        with self.assertRaisesRegex(_noise.NoiseError, "pinned backend"):
            hs.finish(forged)
        another = _noise.AppHandshake(app, _noise.public_of(backend))
        welcome, _ = _noise.BackendHandshake(backend, another.hello).welcome()
        with self.assertRaisesRegex(_noise.NoiseError, "another session"):
            hs.finish(welcome)
        another.finish(welcome)


class Keys(TempDir):
    def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(self):
        key, pub = fac.keygen(self.path("alpha"))
        self.assertEqual((os.path.basename(key), os.path.basename(pub)), ("alpha.key", "alpha.pub"))
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        with open(pub) as f:
            line = f.read()
        self.assertTrue(line.endswith("\n") and len(line) == 45 and line.count("\n") == 1, repr(line))
        private = fac.read_private(key)
        self.assertEqual(fac.read_public(pub), fac.public_of(private))
        self.assertEqual(fac.read_public(line), fac.public_of(private), "the line itself")
        with self.assertRaises(FileExistsError):
            fac.keygen(self.path("alpha"))
        self.assertEqual(fac.read_private(key), private, "the old key stays")

    def test_malformed_or_missing_keys_are_typed_errors(self):
        bad = self.path("bad.pub")
        for text, why in [("not base64!\n", "not base64"), (fac.encode_key(b"x" * 31) + "\n", "31 bytes")]:
            with open(bad, "w") as f:
                f.write(text)
            self.assertIn(why, raises(self, "INVALID_ARGUMENT", fac.read_public, bad).message)
        raises(self, "NOT_FOUND", fac.read_private, self.path("missing.key"))
        raises(self, "UNAVAILABLE", fac.Facilities.connect, self.path("no.sock"), b"k" * 32, b"p" * 32)


class BackendProtocol(unittest.TestCase):
    """The Python backend spoken to frame by frame, as the relay does."""

    def setUp(self):
        self.app, self.be = _noise.generate_private(), _noise.generate_private()
        self.seen, self.log = [], []
        self.backend = Backend(self.be, {"alpha": _noise.public_of(self.app)}, self.on_message, log=self.log.append)
        self.addCleanup(self.backend.close)
        self.address = self.backend.serve("127.0.0.1", 0)

    def on_message(self, app, kind, data):
        self.seen.append((app, kind, data))
        return data.upper() if kind == "request" else None

    def connect(self, hello):
        s = socket.create_connection(self.address, timeout=WAIT)
        self.addCleanup(s.close)
        s.sendall(fac.encode_frame(hello=Hello(noise=hello)))
        return s

    def sealed(self, channel, seq, kind, data):
        rid = seq if kind == fac.KIND_REQUEST else 0
        ciphertext = channel.seal(seq, kind, rid, data)
        return fac.encode_frame(sealed=Sealed(seq=seq, kind=kind, request_id=rid, ciphertext=ciphertext))

    def test_sessions_deliver_once_per_hello_and_answer_requests(self):
        hs = _noise.AppHandshake(self.app, _noise.public_of(self.be))
        s = self.connect(hs.hello)
        down = hs.finish(fac.read_frame(s, 1 << 20).welcome.noise)
        s.sendall(self.sealed(hs.upstream, 1, fac.KIND_NOTIFY, b"one"))
        self.assertEqual(fac.read_frame(s, 1 << 20).delivered.seq, 1)
        s.close()
        s = self.connect(hs.hello)  # a relay resending after a reconnect
        down = hs.finish(fac.read_frame(s, 1 << 20).welcome.noise)
        s.sendall(self.sealed(hs.upstream, 1, fac.KIND_NOTIFY, b"one"))
        s.sendall(self.sealed(hs.upstream, 2, fac.KIND_REQUEST, b"two"))
        self.assertEqual(fac.read_frame(s, 1 << 20).delivered.seq, 1)
        reply = fac.read_frame(s, 1 << 20).sealed
        self.assertEqual((reply.seq, reply.kind, reply.request_id), (1, fac.KIND_REPLY, 2))
        self.assertEqual(down.open(reply.seq, reply.kind, reply.request_id, reply.ciphertext), b"TWO")
        self.assertEqual(fac.read_frame(s, 1 << 20).delivered.seq, 2)
        self.assertEqual(self.seen, [("alpha", "notify", b"one"), ("alpha", "request", b"two")])
        self.assertEqual(self.backend.notify("alpha", b"hi"), 1)
        m = fac.read_frame(s, 1 << 20).sealed
        self.assertEqual((m.seq, m.kind, down.open(m.seq, m.kind, 0, m.ciphertext)), (2, fac.KIND_DIRECTED, b"hi"))

    def test_an_unlisted_app_or_a_hello_to_another_key_is_refused_and_logged(self):
        stranger = _noise.generate_private()
        for app, be, why in [(stranger, self.be, "not on the allow list"), (self.app, stranger, "not sealed")]:
            s = self.connect(_noise.AppHandshake(app, _noise.public_of(be)).hello)
            self.assertIn(why, fac.read_frame(s, 1 << 20).refused.reason)
            self.assertIsNone(fac.read_frame(s, 1 << 20), "the connection ends")
        wait_until(lambda: len([l for l in self.log if "refused" in l]) == 2, "two refusals logged")
        raises(self, "NOT_FOUND", self.backend.notify, "beta", b"x")
        raises(self, "UNAVAILABLE", self.backend.notify, "alpha", b"x")


class ClientAgainstAFakeRelay(TempDir):
    """The SDK's own checks, with a relay played frame by frame."""

    def setUp(self):
        super().setUp()
        self.app, self.be = _noise.generate_private(), _noise.generate_private()
        self.sock = self.path("fac.sock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(self.listener.close)
        self.listener.bind(self.sock)
        self.listener.listen(1)
        self.listener.settimeout(WAIT)

    def play(self, script):
        def run():
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(WAIT)
                try:
                    script(conn, fac.read_frame(conn, 1 << 20).hello.noise)
                except OSError:  # the client went
                    pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(t.join, WAIT)

    def status(self, conn, max_bytes=10):
        conn.sendall(fac.encode_frame(relay_status=P("furnace.fac.v1.RelayStatus")(max_message_bytes=max_bytes)))

    def test_a_welcome_from_another_key_is_not_permitted(self):
        impostor = _noise.generate_private()

        def script(conn, hello):
            other = _noise.AppHandshake(self.app, _noise.public_of(impostor))
            welcome, _ = _noise.BackendHandshake(impostor, other.hello).welcome()
            self.status(conn)
            conn.sendall(fac.encode_frame(welcome=Welcome(noise=welcome)))
            fac.read_frame(conn, 1 << 20)  # until the client goes

        self.play(script)
        f = fac.Facilities.connect(self.sock, self.app, _noise.public_of(self.be))
        self.addCleanup(f.close)
        self.assertIn("pinned backend", raises(self, "NOT_PERMITTED", f.request, b"x", WAIT).message)

    def test_connect_default_reads_the_partition_paths_and_the_environment_override(self):
        key = self.path("app.key")
        with open(key, "w") as f:
            f.write(fac.encode_key(self.app) + "\n")
        missing = self.path("missing")
        pin = {fac.BACKEND_KEY_ENV: fac.encode_key(_noise.public_of(self.be))}
        with mock.patch.multiple(fac, DEFAULT_SOCKET=self.sock, DEFAULT_APP_KEY=missing, DEFAULT_BACKEND_KEY=missing):
            self.assertIn("furnace.dev/app-key", raises(self, "NOT_FOUND", fac.Facilities.connect_default).message)
            fac.DEFAULT_APP_KEY = key
            with mock.patch.dict(os.environ, {fac.BACKEND_KEY_ENV: ""}):
                e = raises(self, "NOT_FOUND", fac.Facilities.connect_default)
                self.assertIn("furnace.dev/backend-key", e.message)
            self.play(lambda conn, hello: (_noise.BackendHandshake(self.be, hello), self.status(conn)))
            with mock.patch.dict(os.environ, pin):
                fac.Facilities.connect_default().close()

    def test_sizes_are_checked_locally_failures_are_typed_and_a_lost_relay_is_unavailable(self):
        got = queue.Queue()

        def script(conn, hello):
            welcome, _ = _noise.BackendHandshake(self.be, hello).welcome()
            conn.sendall(fac.encode_frame(welcome=Welcome(noise=welcome)))
            self.status(conn)
            m = fac.read_frame(conn, 1 << 20).sealed
            got.put(m)
            failed = P("furnace.fac.v1.Failed")(seq=m.seq, code=4, message="over the rate")  # 4: LIMIT_EXCEEDED
            conn.sendall(fac.encode_frame(failed=failed))

        self.play(script)
        with fac.Facilities.connect(self.sock, self.app, _noise.public_of(self.be)) as f:
            raises(self, "LIMIT_EXCEEDED", f.notify, b"x" * 11)
            self.assertEqual(raises(self, "LIMIT_EXCEEDED", f.notify, b"x" * 10).message, "over the rate")
            self.assertEqual(got.get(timeout=WAIT).seq, 1, "the oversized one was never sent")
            for call, args in ((f.request, (b"y", WAIT)), (f.receive, (WAIT,)), (f.storage.keys, ())):
                raises(self, "UNAVAILABLE", call, *args)


def wait_until(ready, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(family, address):
    with socket.socket(family) as s:
        try:
            s.connect(address)
            return True
        except OSError:
            return False


class WithProcesses(TempDir):
    """Starts the real relay and `furnace backend`; every process is killed
    and every directory removed after the test."""

    def start(self, args, log, stdin=False, stdout=False):
        err, pipe = open(self.path(log), "ab"), (subprocess.DEVNULL, subprocess.PIPE)
        env = dict(os.environ, FURNACE_LOG="info")
        p = subprocess.Popen(args, stdin=pipe[stdin], stdout=pipe[stdout], stderr=err, env=env)
        self.addCleanup(self.stop, p, err)
        return p

    @staticmethod
    def stop(p, err):
        if p.poll() is None:
            p.kill()
        p.wait(WAIT)
        for f in (p.stdin, p.stdout, err):
            if f is not None:
                f.close()

    def furnace_keygen(self, name):
        out = subprocess.run([FURNACE, "keygen", self.path(name)], capture_output=True, timeout=WAIT)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.decode().strip()

    def relay(self, port, *extra):
        self.relays = getattr(self, "relays", 0) + 1  # each its own socket and storage
        sock, store = self.path("fac-%d.sock" % self.relays), self.path("store-%d" % self.relays)
        address = "127.0.0.1:%d" % port
        self.start([RELAY, "--listen", sock, "--backend", address, "--storage", store] + list(extra), "relay.log")
        wait_until(lambda: accepts(socket.AF_UNIX, sock), "the relay's socket")
        return sock

    def rust_backend(self, port, allow, on_request=None, key="be.key"):
        args = [FURNACE, "backend", "--listen", "127.0.0.1:%d" % port, "--key", self.path(key)]
        args += sum((["--allow", self.path(a)] for a in allow), []) + (["--on-request", on_request] * bool(on_request))
        p = self.start(args, "backend-%d.log" % port, stdin=True, stdout=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in p.stdout], daemon=True).start()
        wait_until(lambda: accepts(socket.AF_INET, ("127.0.0.1", port)), "the backend")
        p.next_line = lambda: json.loads(lines.get(timeout=WAIT))
        return p

    def app(self, sock, key="alpha.key", backend="be.pub"):
        f = fac.Facilities.connect(sock, self.path(key), self.path(backend))
        self.addCleanup(f.close)
        return f

    def assert_refused(self, f):
        """The backend's Refused comes after the relay's status: wait for it."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                f.request(b"let me in", 2.0)
            except VmiError as e:
                if e.code == "NOT_PERMITTED":
                    return e
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                self.fail("a refused app's request was answered")


HOOK = 'd=$(cat); [ "$d" = slow ] && sleep 2; printf %s "$d" | tr a-z A-Z'


@needs_binaries
class PythonAppRustBackend(WithProcesses):
    def setUp(self):
        super().setUp()
        self.be_line = self.furnace_keygen("be")
        self.furnace_keygen("alpha")
        self.port = free_port()
        self.backend = self.rust_backend(self.port, ["alpha.pub"], on_request=HOOK)

    def test_notify_request_and_the_backend_sending_to_the_app(self):
        f = self.app(self.relay(self.port))
        f.notify(b"marker-notify")
        self.assertEqual(f.request(b"shout this", WAIT), b"SHOUT THIS")
        f.notify(b"\xff\x00")
        f.flush(WAIT)
        self.assertTrue(f.relay_status.backend_connected)
        self.assertEqual(self.backend.next_line(), {"app": "alpha", "type": "notify", "data": "marker-notify"})
        self.assertEqual(self.backend.next_line(), {"app": "alpha", "type": "request", "data": "shout this"})
        self.assertEqual(self.backend.next_line(), {"app": "alpha", "type": "notify", "data_base64": "/wA="})
        self.backend.stdin.write(b"notify alpha to-alpha\nbroadcast to-all\n")
        self.backend.stdin.flush()
        self.assertEqual(f.receive(WAIT), fac.Message("directed", b"to-alpha"))
        self.assertEqual(f.receive(WAIT), fac.Message("broadcast", b"to-all"))
        self.assertIsNone(f.receive(0.2))
        big = b"0123456789abcdefghijklmnopqrstuvwxyz" * 6000  # several Noise chunks each way
        self.assertEqual(f.request(big, WAIT), big.upper())

    def test_storage(self):
        f = self.app(self.relay(self.port, "--storage-quota", "1000"))
        s = f.storage
        self.assertEqual(s.keys(), [])
        s.put("last-scan", b"\x00data")
        s.put("b.1", b"x")
        self.assertEqual(s.get("last-scan"), b"\x00data")
        self.assertEqual(sorted(s.keys()), ["b.1", "last-scan"])
        s.delete("b.1")
        self.assertEqual(s.keys(), ["last-scan"])
        raises(self, "NOT_FOUND", s.get, "b.1")
        raises(self, "INVALID_ARGUMENT", s.put, ".hidden", b"x")
        raises(self, "LIMIT_EXCEEDED", s.put, "last-scan", b"y" * 2000)
        self.assertEqual(s.get("last-scan"), b"\x00data", "the old value stays")

    def test_limits_deadlines_and_a_missing_backend(self):
        f = self.app(self.relay(self.port, "--max-message-bytes", "1000"))
        self.assertEqual(f.relay_status.max_message_bytes, 1000)
        raises(self, "LIMIT_EXCEEDED", f.notify, b"x" * 1001)
        f.notify(b"x" * 1000)
        raises(self, "DEADLINE_EXCEEDED", f.request, b"slow", 0.5)
        self.assertEqual(f.request(b"fast", WAIT), b"FAST")
        rate = self.app(self.relay(self.port, "--messages-per-second", "1"))
        codes = []
        for n in range(5):  # one a second, and a burst of five
            try:
                rate.notify(b"%d" % n)
            except VmiError as e:
                codes.append(e.code)
        self.assertIn("LIMIT_EXCEEDED", codes)
        down_port = free_port()
        away = self.app(self.relay(down_port))
        raises(self, "UNAVAILABLE", away.request, b"anyone?", WAIT)
        away.notify(b"queued")  # taken into the outbox while the backend is away
        later = self.rust_backend(down_port, ["alpha.pub"])
        away.flush(2 * WAIT)
        self.assertEqual(later.next_line(), {"app": "alpha", "type": "notify", "data": "queued"})

    def test_a_wrong_backend_key_or_an_unlisted_app_is_not_permitted(self):
        fac.keygen(self.path("other"))
        sock = self.relay(self.port)
        e = self.assert_refused(self.app(sock, backend="other.pub"))
        self.assertIn("refused", e.message)
        e = self.assert_refused(self.app(sock, key="other.key"))
        self.assertIn("not on the allow list", e.message)
        f = self.app(sock)  # the listed app still gets in
        self.assertEqual(f.request(b"ok?", WAIT), b"OK?")

    def test_keys_made_by_either_side_work_on_the_other(self):
        self.assertEqual(fac.encode_key(fac.public_of(fac.read_private(self.path("be.key")))), self.be_line)
        self.assertEqual(fac.read_public(self.be_line), fac.read_public(self.path("be.pub")))
        fac.keygen(self.path("py-be"))
        fac.keygen(self.path("beta"))
        port = free_port()
        backend = self.rust_backend(port, ["beta.pub"], key="py-be.key")
        f = self.app(self.relay(port), key="beta.key", backend="py-be.pub")
        self.assertEqual(f.request(b"hello", WAIT), b"ok")
        self.assertEqual(backend.next_line(), {"app": "beta", "type": "request", "data": "hello"})


@needs_binaries
class PythonAppPythonBackend(WithProcesses):
    def setUp(self):
        super().setUp()
        self.furnace_keygen("be")
        fac.keygen(self.path("alpha"))
        self.seen, self.log = queue.Queue(), []
        self.port = free_port()
        self.backend = self.python_backend()

    def python_backend(self):
        b = Backend(self.path("be.key"), {"alpha": self.path("alpha.pub")}, self.on_message, log=self.log.append)
        self.addCleanup(b.close)
        b.serve("127.0.0.1", self.port)
        return b

    def on_message(self, app, kind, data):
        self.seen.put((app, kind, data))
        return b"re: " + data if kind == "request" else None

    def test_messages_both_ways_and_timers(self):
        f = self.app(self.relay(self.port))
        f.notify(b"hello")
        self.assertEqual(f.request(b"question", WAIT), b"re: question")
        f.flush(WAIT)
        self.assertEqual(self.seen.get(timeout=WAIT), ("alpha", "notify", b"hello"))
        self.assertEqual(self.seen.get(timeout=WAIT), ("alpha", "request", b"question"))
        self.assertEqual(self.backend.connected(), ["alpha"])
        self.assertEqual(self.backend.notify("alpha", b"just you"), 1)
        self.assertEqual(self.backend.broadcast(b"everyone"), 1)
        self.assertEqual(f.receive(WAIT), fac.Message("directed", b"just you"))
        self.assertEqual(f.receive(WAIT), fac.Message("broadcast", b"everyone"))
        ticks = []
        self.backend.every(0.05, lambda b: ticks.append(b.broadcast(b"tick")))
        self.assertEqual(f.receive(WAIT), fac.Message("broadcast", b"tick"))
        big = os.urandom(3 * 65535)
        self.assertEqual(f.request(big, WAIT), b"re: " + big)

    def test_a_restarted_backend_gets_what_was_queued_once(self):
        f = self.app(self.relay(self.port))
        f.notify(b"before")
        f.flush(WAIT)
        self.backend.close()
        wait_until(lambda: not f.relay_status.backend_connected, "the relay to notice")
        f.notify(b"while away")
        self.python_backend()
        f.flush(WAIT)
        got = [self.seen.get(timeout=WAIT) for _ in range(2)]
        self.assertEqual([d for _, _, d in got], [b"before", b"while away"])
        self.assertEqual(f.request(b"again", WAIT), b"re: again")
        self.assertEqual(self.seen.get(timeout=WAIT)[2], b"again")
        self.assertTrue(self.seen.empty(), "nothing twice")

    def test_an_unlisted_app_is_refused_and_logged(self):
        fac.keygen(self.path("stranger"))
        self.assert_refused(self.app(self.relay(self.port), key="stranger.key"))
        wait_until(lambda: any("not on the allow list" in l for l in self.log), "the refusal in the log")


if __name__ == "__main__":
    unittest.main()
