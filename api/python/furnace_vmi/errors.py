"""The typed error every call can fail with (docs/protocol.md, "Wire format")."""

from . import _proto

#: The ``type_url`` of our typed ``Error`` in a failed status's details.
ERROR_TYPE_URL = "type.googleapis.com/furnace.vmi.v1.Error"

_PREFIX = "ERROR_CODE_"

#: Every error code name: NOT_PERMITTED, BAD_ADDRESS, ...
ERROR_CODES = tuple(
    _proto.enum_name(_proto.ErrorCodeEnum, _PREFIX, v.number) for v in _proto.ErrorCodeEnum.values if v.number != 0
)

# gRPC status code -> ErrorCode, for statuses without our typed detail
# (as furnace_api::error::code_from_grpc).
_FROM_GRPC = {
    7: "NOT_PERMITTED",  # PERMISSION_DENIED
    11: "BAD_ADDRESS",  # OUT_OF_RANGE
    5: "NOT_FOUND",  # NOT_FOUND
    8: "LIMIT_EXCEEDED",  # RESOURCE_EXHAUSTED
    14: "GUEST_GONE",  # UNAVAILABLE (from a server that answered: its guest is gone)
    9: "PROFILE_MISMATCH",  # FAILED_PRECONDITION
    3: "INVALID_ARGUMENT",  # INVALID_ARGUMENT
    12: "UNSUPPORTED",  # UNIMPLEMENTED
}


class VmiError(Exception):
    """A failed call.

    ``code`` is an ErrorCode name without its prefix (``"NOT_PERMITTED"``,
    ``"BAD_ADDRESS"``, ... ``"UNAVAILABLE"`` when the sidecar cannot be
    reached), ``message`` the sidecar's explanation, ``call_index`` the index
    of the failing call of a batch (None outside batches).
    """

    def __init__(self, code, message, call_index=None):
        super(VmiError, self).__init__(code, message, call_index)
        self.code = code
        self.message = message
        self.call_index = call_index

    def __str__(self):
        text = "[%s] %s" % (self.code, self.message)
        if self.call_index is not None:
            text += " (batch call %d)" % self.call_index
        return text

    def __repr__(self):
        return "VmiError(%r, %r, call_index=%r)" % (self.code, self.message, self.call_index)

    @classmethod
    def from_proto(cls, error, call_index=None):
        """From a ``furnace.vmi.v1.Error`` message."""
        code = _proto.enum_name(_proto.ErrorCodeEnum, _PREFIX, error.code) or "INTERNAL"
        return cls(code, error.message, call_index)

    @classmethod
    def from_status(cls, status):
        """From a failed ``ttrpc.Status``: our typed detail if present, else by gRPC code."""
        for detail in status.details:
            if detail.type_url == ERROR_TYPE_URL:
                try:
                    error = _proto.v1.Error.FromString(detail.value)
                except Exception:  # a malformed detail: fall back to the status itself
                    break
                return cls.from_proto(error)
        return cls(_FROM_GRPC.get(status.code, "INTERNAL"), status.message)
