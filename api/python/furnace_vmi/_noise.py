"""Noise for facilities: the two one-way patterns the session uses, the key
files, and the sealing on top (docs/facilities.md, "Encryption").

The Noise part follows the Noise Protocol Framework, revision 34, for
exactly ``Noise_X_25519_ChaChaPoly_BLAKE2s`` (``<- s``; ``-> e, es, s, ss``)
and ``Noise_K_25519_ChaChaPoly_BLAKE2s`` (``-> s``, ``<- s``; ``-> e, es,
ss``), as the Rust side's ``snow`` runs them: pre-message keys are hashed
initiator's first, transport messages are sealed with explicit nonces (snow's
``StatelessTransportState``) under the first key of Split, with empty
associated data.

Key files are ``furnace keygen``'s (api/src/facilities/keys.rs): one line of
standard base64 of the 32-byte X25519 key. The sealing part is ``api/src/facilities/seal.rs`` again, byte for byte:
prologues, the 17-byte inner header, 65535-byte chunks, nonce
``seq * 65536 + chunk``, the Welcome's payload = the Hello's handshake hash.
"""

import base64
import binascii
import hashlib
import hmac
import os
import pathlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .errors import VmiError

UPSTREAM = b"Noise_X_25519_ChaChaPoly_BLAKE2s"
DOWNSTREAM = b"Noise_K_25519_ChaChaPoly_BLAKE2s"
UPSTREAM_PROLOGUE = b"furnace-fac/1 app->backend"
DOWNSTREAM_PROLOGUE = b"furnace-fac/1 backend->app"

KEY_LEN = 32
HASHLEN = 32
DHLEN = 32
TAG = 16
#: The largest Noise message.
NOISE_MAX = 65535
CHUNK_PLAINTEXT = NOISE_MAX - TAG
#: kind (1), request id (8), total plaintext length (8).
INNER_HEADER = 17
#: Chunks per message: the nonce is ``seq * 65536 + chunk``.
MAX_CHUNKS = 65536
_U64 = (1 << 64) - 1


class NoiseError(Exception):
    """A handshake or a message that does not decrypt, or a bad key."""


# --- primitives --------------------------------------------------------------


def _hash(data):
    return hashlib.blake2s(data).digest()


def _hmac(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def _hkdf2(chaining_key, ikm):
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


def _nonce(n):
    return b"\x00\x00\x00\x00" + struct.pack("<Q", n)


def _private(raw):
    try:
        return X25519PrivateKey.from_private_bytes(bytes(raw))
    except ValueError as e:
        raise NoiseError("an X25519 private key has 32 bytes: %s" % e)


def public_of(private):
    """The X25519 public key (32 bytes) of a 32-byte private key."""
    return _private(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate_private():
    """A new 32-byte X25519 private key."""
    key = X25519PrivateKey.generate()
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _dh(private, public):
    try:
        return _private(private).exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError as e:  # a short key, or a low-order point (all-zero output)
        raise NoiseError("X25519 failed: %s" % e)


def _encrypt(key, n, ad, plaintext):
    return ChaCha20Poly1305(key).encrypt(_nonce(n), bytes(plaintext), ad)


def _decrypt(key, n, ad, ciphertext):
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(n), bytes(ciphertext), ad)
    except InvalidTag:
        raise NoiseError("authentication failed")


# --- the handshake -----------------------------------------------------------


class _Symmetric(object):
    """SymmetricState: ck, h and the CipherState's k and n."""

    def __init__(self, protocol_name, prologue):
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name + b"\x00" * (HASHLEN - len(protocol_name))
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.k = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data):
        self.h = _hash(self.h + bytes(data))

    def mix_key(self, ikm):
        self.ck, self.k = _hkdf2(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext):
        if self.k is None:
            out = bytes(plaintext)
        else:
            out = _encrypt(self.k, self.n, self.h, plaintext)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext):
        if self.k is None:
            out = bytes(ciphertext)
        else:
            out = _decrypt(self.k, self.n, self.h, ciphertext)
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self):
        """The initiator -> responder key (the only one a one-way pattern uses)."""
        first, _second = _hkdf2(self.ck, b"")
        return first


def x_initiate(s, rs, prologue, payload=b"", e=None):
    """Noise_X initiator: (message, handshake hash, transport key)."""
    st = _Symmetric(UPSTREAM, prologue)
    st.mix_hash(rs)  # <- s
    e = generate_private() if e is None else e
    e_pub = public_of(e)
    st.mix_hash(e_pub)  # e
    st.mix_key(_dh(e, rs))  # es
    enc_s = st.encrypt_and_hash(public_of(s))  # s
    st.mix_key(_dh(s, rs))  # ss
    body = st.encrypt_and_hash(payload)
    return e_pub + enc_s + body, st.h, st.split()


def x_respond(s, prologue, message):
    """Noise_X responder: (the initiator's static key, payload, handshake hash, transport key)."""
    if len(message) < DHLEN + DHLEN + TAG + TAG:
        raise NoiseError("a Noise_X message of %d bytes is short" % len(message))
    st = _Symmetric(UPSTREAM, prologue)
    st.mix_hash(public_of(s))  # <- s
    re = bytes(message[:DHLEN])
    st.mix_hash(re)  # e
    st.mix_key(_dh(s, re))  # es
    rs = st.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAG])  # s
    st.mix_key(_dh(s, rs))  # ss
    payload = st.decrypt_and_hash(message[2 * DHLEN + TAG :])
    return rs, payload, st.h, st.split()


def k_initiate(s, rs, prologue, payload=b"", e=None):
    """Noise_K initiator: (message, handshake hash, transport key)."""
    st = _Symmetric(DOWNSTREAM, prologue)
    st.mix_hash(public_of(s))  # -> s
    st.mix_hash(rs)  # <- s
    e = generate_private() if e is None else e
    e_pub = public_of(e)
    st.mix_hash(e_pub)  # e
    st.mix_key(_dh(e, rs))  # es
    st.mix_key(_dh(s, rs))  # ss
    body = st.encrypt_and_hash(payload)
    return e_pub + body, st.h, st.split()


def k_respond(s, rs, prologue, message):
    """Noise_K responder (``rs``: the initiator's static key): (payload, handshake hash, transport key)."""
    if len(message) < DHLEN + TAG:
        raise NoiseError("a Noise_K message of %d bytes is short" % len(message))
    st = _Symmetric(DOWNSTREAM, prologue)
    st.mix_hash(rs)  # -> s
    st.mix_hash(public_of(s))  # <- s
    re = bytes(message[:DHLEN])
    st.mix_hash(re)  # e
    st.mix_key(_dh(s, re))  # es
    st.mix_key(_dh(s, rs))  # ss
    payload = st.decrypt_and_hash(message[DHLEN:])
    return payload, st.h, st.split()


# --- key files (api/src/facilities/keys.rs) ---------------------------------------


def decode_key(what, text):
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise VmiError("INVALID_ARGUMENT", "%s: not base64 (%s); paste the line `furnace keygen` wrote" % (what, e))
    if len(raw) != KEY_LEN:
        raise VmiError("INVALID_ARGUMENT", "%s: %d bytes where an X25519 key has %d" % (what, len(raw), KEY_LEN))
    return raw


def _read_text(path, what):
    try:
        with open(path, "r") as f:
            return f.read()
    except FileNotFoundError as e:
        raise VmiError("NOT_FOUND", "%s %s: %s" % (what, path, e.strerror))
    except PermissionError as e:
        raise VmiError("NOT_PERMITTED", "%s %s: %s" % (what, path, e.strerror))
    except (OSError, UnicodeDecodeError) as e:
        raise VmiError("INVALID_ARGUMENT", "%s %s: %s" % (what, path, e))


def encode_key(raw):
    """A key as the one line `furnace keygen` writes (no newline)."""
    return base64.b64encode(bytes(raw)).decode("ascii")


def read_private(path):
    """The 32-byte private key in a ``.key`` file."""
    return decode_key("private key %s" % path, _read_text(path, "private key"))


def read_public(path_or_text):
    """A 32-byte public key: the line itself (base64) or a ``.pub`` file's path."""
    if isinstance(path_or_text, (str, bytes)):
        try:
            return decode_key("a public key", path_or_text)
        except VmiError:
            text = os.fsdecode(path_or_text)
            if not (os.path.exists(text) or "/" in text or text.endswith(".pub")):
                raise
            path_or_text = text
    return decode_key("public key %s" % path_or_text, _read_text(path_or_text, "public key"))


def keygen(stem):
    """Writes ``stem.key`` (0600, refusing to overwrite: FileExistsError) and
    ``stem.pub``; returns their paths."""
    stem = pathlib.Path(stem)
    key_path, pub_path = stem.with_suffix(".key"), stem.with_suffix(".pub")
    private = generate_private()
    fd = os.open(str(key_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(private) + "\n")
    with open(str(pub_path), "w") as f:
        f.write(encode_key(public_of(private)) + "\n")
    return str(key_path), str(pub_path)


# --- sealing (seal.rs) -----------------------------------------------------------


def sealed_len(length):
    """The sealed size of ``length`` bytes of data."""
    plain = length + INNER_HEADER
    return plain + max(1, -(-plain // CHUNK_PLAINTEXT)) * TAG


def _seal_nonce(seq, chunk):
    return ((seq << 16) | chunk) & _U64


class Channel(object):
    """One direction of a session: seals or opens by sequence number."""

    def __init__(self, key):
        self._aead = ChaCha20Poly1305(key)

    def seal(self, seq, kind, request_id, data):
        data = bytes(data)
        total = sealed_len(len(data))
        if -(-total // NOISE_MAX) > MAX_CHUNKS:
            raise NoiseError("a message of %d bytes is larger than one sealed message can carry" % len(data))
        head = min(CHUNK_PLAINTEXT - INNER_HEADER, len(data))
        chunks = [struct.pack(">BQQ", kind, request_id, len(data)) + data[:head]]
        chunks += [data[i : i + CHUNK_PLAINTEXT] for i in range(head, len(data), CHUNK_PLAINTEXT)]
        out = b"".join(self._aead.encrypt(_nonce(_seal_nonce(seq, i)), c, b"") for i, c in enumerate(chunks))
        assert len(out) == total
        return out

    def open(self, seq, kind, request_id, ciphertext):
        """Opens a message sealed with :meth:`seal`, checking its clear fields."""
        ciphertext = bytes(ciphertext)

        def corrupt(why):
            return NoiseError("message %d does not decrypt: %s" % (seq, why))

        if not ciphertext:
            raise corrupt("it is empty")
        chunks = [ciphertext[i : i + NOISE_MAX] for i in range(0, len(ciphertext), NOISE_MAX)]
        if len(chunks) > MAX_CHUNKS:
            raise corrupt("it has too many chunks")
        try:
            first = self._aead.decrypt(_nonce(_seal_nonce(seq, 0)), chunks[0], b"")
        except InvalidTag:
            raise corrupt("its first chunk fails authentication")
        if len(first) < INNER_HEADER:
            raise corrupt("its header is short")
        got_kind, got_id, length = struct.unpack(">BQQ", first[:INNER_HEADER])
        if got_kind != kind or got_id != request_id:
            raise corrupt("its clear fields were altered")
        if sealed_len(length) != len(ciphertext):
            raise corrupt("its length does not match its header")
        parts = [first[INNER_HEADER:]]
        for i, chunk in enumerate(chunks[1:], 1):
            try:
                parts.append(self._aead.decrypt(_nonce(_seal_nonce(seq, i)), chunk, b""))
            except InvalidTag:
                raise corrupt("a chunk fails authentication")
        return b"".join(parts)


class AppHandshake(object):
    """The app's side: ``hello`` to send, ``upstream`` to seal with; keep it
    to check the backend's Welcome with :meth:`finish`."""

    def __init__(self, app_key, backend):
        self._app_key = bytes(app_key)
        self._backend = bytes(backend)
        self.hello, self.hash, key = x_initiate(self._app_key, self._backend, UPSTREAM_PROLOGUE)
        self.upstream = Channel(key)

    def finish(self, welcome):
        """The downstream channel; a Welcome from another key, or for another Hello, fails."""
        try:
            payload, _h, key = k_respond(self._app_key, self._backend, DOWNSTREAM_PROLOGUE, welcome)
        except NoiseError:
            raise NoiseError("the Welcome is not from the pinned backend key")
        if not hmac.compare_digest(payload, self.hash):
            raise NoiseError("the Welcome answers another session's Hello")
        return Channel(key)


class BackendHandshake(object):
    """The backend's side: reads a Hello, learning the app's key (``app``)
    and the upstream channel (``upstream``)."""

    def __init__(self, backend_key, hello):
        self._backend_key = bytes(backend_key)
        try:
            self.app, _payload, self.hash, key = x_respond(self._backend_key, UPSTREAM_PROLOGUE, hello)
        except NoiseError:
            raise NoiseError("the Hello is not sealed to this backend's key")
        self.upstream = Channel(key)

    def welcome(self):
        """(the Welcome message, the downstream channel)."""
        message, _h, key = k_initiate(self._backend_key, self.app, DOWNSTREAM_PROLOGUE, self.hash)
        return message, Channel(key)
