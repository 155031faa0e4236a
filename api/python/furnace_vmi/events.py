"""Events: subscribe, iterate, ack. Mirrors the Rust SDK (``api/src/events.rs``)::

    from furnace_vmi import Dropped, Vmi, syscalls

    with Vmi.connect_default() as vmi:
        opens = vmi.subscribe(syscalls(["openat"], comm="cat"))
        for item in vmi.events(opens):
            if isinstance(item, Dropped):
                print("lost", item.count, "events")
            else:
                print(item)

The spec builders return an ``EventSpec``; each takes the filters ``pid``
(0: any process), ``comm`` (empty: any task name), ``sync`` (hold the guest
until each event is acked; needs the ``pause`` permission) and ``queue`` (the
most undelivered events kept; 0: the sidecar's default).

A sync subscription holds the guest from each hit until its event is acked.
The iterator acks an event when it is asked for the next one, so the guest
stays stopped exactly while the app handles the event.
"""

import collections
import dataclasses

from ._proto import v1
from .errors import VmiError

#: Seconds one long poll waits; below the connection's call timeout.
LONG_POLL = 10.0
#: Events asked for per poll.
BATCH = 64


@dataclasses.dataclass(frozen=True)
class Dropped(object):
    """What the iterator yields when the subscription lost ``count`` events
    (its queue was full, or the app was over the rate limit)."""

    count: int


def _spec(source_field, source_class, source_fields, pid, comm, sync, queue):
    """An EventSpec with one source; a value protobuf rejects (negative, too
    wide, wrong type) is an INVALID_ARGUMENT VmiError."""
    try:
        source = source_class(**source_fields)
        return v1.EventSpec(
            **{source_field: source},
            pid=pid,
            comm=comm,
            sync=sync,
            queue_capacity=queue,
        )
    except (ValueError, TypeError) as e:
        raise VmiError("INVALID_ARGUMENT", "EventSpec %s: %s" % (source_field, e))


def syscalls(names=(), exits=False, enter=True, pid=0, comm="", sync=False, queue=0):
    """Entry to the x86-64 syscalls ``names`` (every call if empty); with
    ``exits``, also their returns (only the returns if ``enter`` is False)."""
    if isinstance(names, str):
        names = (names,)
    if not enter and not exits:
        raise VmiError("INVALID_ARGUMENT", "a syscall subscription needs enter, exit or both")
    source = {"names": list(names), "enter": enter, "exit": exits}
    return _spec("syscall", v1.SyscallSource, source, pid, comm, sync, queue)


def processes(exec_=True, exit=True, pid=0, comm="", sync=False, queue=0):
    """Process exec and exit."""
    if not exec_ and not exit:
        raise VmiError("INVALID_ARGUMENT", "a process subscription needs exec, exit or both")
    return _spec("process", v1.ProcessSource, {"exec": exec_, "exit": exit}, pid, comm, sync, queue)


def breakpoint(symbol, offset=0, pid=0, comm="", sync=False, queue=0):
    """A breakpoint at kernel symbol ``symbol`` + ``offset``."""
    source = {"symbol": symbol, "offset": offset}
    return _spec("breakpoint", v1.BreakpointSource, source, pid, comm, sync, queue)


def breakpoint_at(address, pid=0, comm="", sync=False, queue=0):
    """A breakpoint at a kernel virtual address."""
    return _spec("breakpoint", v1.BreakpointSource, {"address": address}, pid, comm, sync, queue)


def timer(period_ms, pid=0, comm="", sync=False, queue=0):
    """A tick every ``period_ms`` milliseconds, with no breakpoint."""
    return _spec("timer", v1.TimerSource, {"period_ms": period_ms}, pid, comm, sync, queue)


class EventStream(object):
    """A subscription's deliveries as a blocking iterator (what
    :meth:`Vmi.events` returns): each item is an ``Event``, or a
    :class:`Dropped` before the events that followed a loss. It never ends by
    itself; a failed poll raises VmiError, after which iterating polls again.

    Sync events are acked with the poll after they were handed out;
    :meth:`ack_now` acks them without waiting for more. :meth:`close` (or
    leaving a ``with`` block) also acks the sync events still buffered, so
    the guest runs on at once instead of when its hold runs out.
    """

    def __init__(self, vmi, subscription, long_poll=LONG_POLL, batch=BATCH):
        self._vmi = vmi
        self._subscription = subscription
        self._long_poll = long_poll
        self._batch = batch
        self._buffered = collections.deque()
        self._to_ack = []  # sync events handed out, acked with the next poll
        self._closed = False

    def __iter__(self):
        return self

    def __next__(self):
        while not self._closed:
            if self._buffered:
                event = self._buffered.popleft()
                if event.sync:
                    self._to_ack.append(event.id)
                return event
            acks, self._to_ack = self._to_ack, []
            reply = self._vmi.next_events(self._subscription, self._batch, self._long_poll, acks)
            self._buffered.extend(reply.events)
            if reply.dropped:
                return Dropped(reply.dropped)
        raise StopIteration

    def ack_now(self):
        """Acks the sync events handed out so far without waiting for more."""
        acks, self._to_ack = self._to_ack, []
        if acks:
            self._vmi.ack(acks)

    def close(self):
        """Ends the iteration, acking every sync event handed out or buffered."""
        if self._closed:
            return
        self._closed = True
        self._to_ack.extend(event.id for event in self._buffered if event.sync)
        self._buffered.clear()
        try:
            self.ack_now()
        except VmiError:
            pass  # the hold is over anyway: it ran out, or the connection is gone

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
