"""Unit tests of the Python SDK's events: spec builders, the calls' requests
and the iterator's acks and drop counts, against the fake ttrpc server of
test_wire.py.

Run: python3 -m unittest discover -s api/python/tests
"""

import collections
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from furnace_vmi import (  # noqa: E402
    Dropped,
    Vmi,
    VmiError,
    breakpoint,
    breakpoint_at,
    processes,
    syscalls,
    timer,
    v1,
)
from test_wire import FakeTtrpcServer, Status  # noqa: E402

VMI = "furnace.vmi.v1.Vmi"


def openat(event_id, sync=False, path="/etc/hostname"):
    return v1.Event(
        id=event_id,
        subscription=7,
        sync=sync,
        task=v1.Task(pid=42, tid=42, comm="cat"),
        syscall_enter=v1.SyscallEnter(
            number=257,
            name="openat",
            arguments=[
                v1.SyscallArgument(name="dfd", type="int", value=0xFFFFFF9C),
                v1.SyscallArgument(name="filename", type="const char *", value=0x7FFC0000, text=path),
            ],
        ),
    )


class FakeEventSidecar(object):
    """Answers NextEvents with the batches queued in ``batches`` (an empty
    one once they run out), and Subscribe, Ack and Unsubscribe with fixed
    replies; ``requests`` keeps each call's decoded request by method."""

    REQUESTS = {
        "Subscribe": v1.SubscribeRequest,
        "NextEvents": v1.NextEventsRequest,
        "Ack": v1.AckRequest,
        "Unsubscribe": v1.UnsubscribeRequest,
    }

    def __init__(self, batches=(), failures=None):
        self.batches = collections.deque(batches)
        self.failures = failures or {}  # method -> Status
        self.requests = collections.defaultdict(list)

    def __call__(self, service, method, payload):
        if service != VMI or method not in self.REQUESTS:
            return Status(12, "unknown method %s/%s" % (service, method))
        self.requests[method].append(self.REQUESTS[method].FromString(payload))
        if method in self.failures:
            return self.failures[method]
        if method == "Subscribe":
            return v1.Subscription(id=7, queue_capacity=128)
        if method == "NextEvents":
            return self.batches.popleft() if self.batches else v1.EventBatch()
        return v1.Empty()


class SpecTest(unittest.TestCase):
    def test_syscalls(self):
        spec = syscalls(["openat", "read"], comm="cat", pid=42, sync=True, queue=16)
        self.assertEqual(spec.WhichOneof("source"), "syscall")
        self.assertEqual(list(spec.syscall.names), ["openat", "read"])
        self.assertEqual((spec.syscall.enter, spec.syscall.exit), (True, False))
        self.assertEqual((spec.pid, spec.comm, spec.sync, spec.queue_capacity), (42, "cat", True, 16))
        self.assertEqual(list(syscalls("openat").syscall.names), ["openat"])
        self.assertEqual(list(syscalls().syscall.names), [])
        only_exits = syscalls(["openat"], exits=True, enter=False).syscall
        self.assertEqual((only_exits.enter, only_exits.exit), (False, True))
        both = syscalls(exits=True).syscall
        self.assertEqual((both.enter, both.exit), (True, True))

    def test_other_sources(self):
        spec = processes(exit=False, comm="sh")
        self.assertEqual((spec.WhichOneof("source"), spec.process.exec, spec.process.exit), ("process", True, False))
        self.assertEqual(spec.comm, "sh")
        spec = breakpoint("do_sys_openat2", 4, sync=True)
        self.assertEqual(spec.breakpoint.WhichOneof("target"), "symbol")
        self.assertEqual((spec.breakpoint.symbol, spec.breakpoint.offset, spec.sync), ("do_sys_openat2", 4, True))
        spec = breakpoint_at(0xFFFFFFFF81000000)
        self.assertEqual(spec.breakpoint.WhichOneof("target"), "address")
        self.assertEqual((spec.breakpoint.address, spec.breakpoint.offset), (0xFFFFFFFF81000000, 0))
        spec = timer(250, queue=4)
        self.assertEqual((spec.WhichOneof("source"), spec.timer.period_ms, spec.queue_capacity), ("timer", 250, 4))
        self.assertEqual((spec.pid, spec.comm, spec.sync), (0, "", False))

    def test_bad_input_is_invalid_argument(self):
        bad = {
            "negative pid": lambda: syscalls(["openat"], pid=-1),
            "comm not text": lambda: processes(comm=5),
            "queue over u32": lambda: timer(100, queue=1 << 32),
            "negative period": lambda: timer(-5),
            "negative offset": lambda: breakpoint("schedule", -1),
            "negative address": lambda: breakpoint_at(-1),
            "names not text": lambda: syscalls([257]),
            "neither enter nor exit": lambda: syscalls(["openat"], enter=False),
            "neither exec nor exit": lambda: processes(exec_=False, exit=False),
        }
        for case, build in bad.items():
            with self.subTest(case):
                with self.assertRaises(VmiError) as caught:
                    build()
                self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")


class EventsTest(unittest.TestCase):
    def connect(self, sidecar, timeout=30.0):
        server = FakeTtrpcServer(sidecar)
        self.addCleanup(server.close)
        self.addCleanup(lambda: self.assertEqual(server.errors, [], "the fake server's handler failed"))
        vmi = Vmi(server.path, timeout=timeout)
        self.addCleanup(vmi.close)
        return vmi

    def test_subscribe_sends_the_spec(self):
        sidecar = FakeEventSidecar()
        vmi = self.connect(sidecar)
        spec = syscalls(["openat"], comm="cat", sync=True, queue=128)
        subscription = vmi.subscribe(spec)
        self.assertEqual((subscription.id, subscription.queue_capacity), (7, 128))
        [request] = sidecar.requests["Subscribe"]
        self.assertEqual(request.spec, spec)
        self.assertEqual(list(request.spec.syscall.names), ["openat"])
        with self.assertRaises(VmiError) as caught:
            vmi.subscribe("openat")
        self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")

    def test_iterator_acks_a_yielded_sync_event_with_the_next_poll(self):
        sidecar = FakeEventSidecar(
            [
                v1.EventBatch(events=[openat(11, sync=True), openat(12)]),
                v1.EventBatch(events=[openat(13, sync=True)]),
                v1.EventBatch(events=[openat(14)]),
            ]
        )
        vmi = self.connect(sidecar)
        stream = vmi.events(vmi.subscribe(syscalls(["openat"], sync=True)))
        self.assertEqual([next(stream).id for _ in range(4)], [11, 12, 13, 14])
        polls = sidecar.requests["NextEvents"]
        self.assertEqual([list(p.ack) for p in polls], [[], [11], [13]])
        self.assertEqual({(p.subscription, p.max_events, p.timeout_ms) for p in polls}, {(7, 64, 10000)})
        self.assertEqual(sidecar.requests["Ack"], [])  # every ack rode on a poll

    def test_dropped_comes_before_the_batch_events(self):
        sidecar = FakeEventSidecar([v1.EventBatch(events=[openat(21), openat(22)], dropped=3)])
        vmi = self.connect(sidecar)
        stream = vmi.events(7)
        self.assertEqual(next(stream), Dropped(3))
        self.assertEqual([next(stream).id, next(stream).id], [21, 22])
        self.assertEqual(len(sidecar.requests["NextEvents"]), 1)

    def test_empty_polls_are_retried_until_something_arrives(self):
        sidecar = FakeEventSidecar([v1.EventBatch(), v1.EventBatch(), v1.EventBatch(events=[openat(5)])])
        vmi = self.connect(sidecar)
        event = next(vmi.events(7))
        self.assertEqual(event.syscall_enter.arguments[1].text, "/etc/hostname")
        self.assertEqual(len(sidecar.requests["NextEvents"]), 3)

    def test_error_status_raises_vmi_error(self):
        hold_over = v1.Error(code=3, message="no unacked event 11 of this app (acked already, or its hold ran out)")
        sidecar = FakeEventSidecar(
            [v1.EventBatch(events=[openat(11, sync=True)])],
            {"Subscribe": Status(7, "no syscalls permission", v1.Error(code=1, message="no syscalls permission"))},
        )
        vmi = self.connect(sidecar)
        with self.assertRaises(VmiError) as caught:
            vmi.subscribe(syscalls(["openat"]))
        self.assertEqual((caught.exception.code, caught.exception.message), ("NOT_PERMITTED", "no syscalls permission"))
        stream = vmi.events(7)
        self.assertEqual(next(stream).id, 11)
        sidecar.failures["NextEvents"] = Status(5, hold_over.message, hold_over)
        with self.assertRaises(VmiError) as caught:
            next(stream)
        self.assertEqual(caught.exception.code, "NOT_FOUND")
        self.assertFalse(vmi.closed)  # a typed error leaves the connection usable

    def test_ack_unsubscribe_and_next_events(self):
        sidecar = FakeEventSidecar([v1.EventBatch(events=[openat(31, sync=True)], dropped=2)])
        vmi = self.connect(sidecar)
        batch = vmi.next_events(7, max_events=8, timeout=0.25, ack=[openat(30), 29])
        self.assertEqual(([e.id for e in batch.events], batch.dropped), ([31], 2))
        vmi.ack(batch.events)
        vmi.ack([32, 33])
        vmi.unsubscribe(v1.Subscription(id=7))
        [poll] = sidecar.requests["NextEvents"]
        self.assertEqual((poll.subscription, poll.max_events, poll.timeout_ms, list(poll.ack)), (7, 8, 250, [30, 29]))
        self.assertEqual([list(a.events) for a in sidecar.requests["Ack"]], [[31], [32, 33]])
        self.assertEqual([u.subscription for u in sidecar.requests["Unsubscribe"]], [7])

    def test_bad_call_arguments_are_refused_before_sending(self):
        sidecar = FakeEventSidecar()
        vmi = self.connect(sidecar, timeout=5.0)
        bad = {
            "negative timeout": lambda: vmi.next_events(7, timeout=-1),
            "timeout not a number": lambda: vmi.next_events(7, timeout="soon"),
            "wait outlasting the connection": lambda: vmi.next_events(7, timeout=10.0),
            "negative subscription": lambda: vmi.next_events(-7, timeout=1),
            "ack of text": lambda: vmi.ack(["31"]),
            "ack of one id": lambda: vmi.ack(31),
            "negative unsubscribe": lambda: vmi.unsubscribe(-1),
        }
        for case, call in bad.items():
            with self.subTest(case):
                with self.assertRaises(VmiError) as caught:
                    call()
                self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
        self.assertEqual(dict(sidecar.requests), {})

    def test_long_poll_stays_below_a_short_connection_timeout(self):
        sidecar = FakeEventSidecar([v1.EventBatch(events=[openat(1)])])
        vmi = self.connect(sidecar, timeout=5.0)
        next(vmi.events(7))
        self.assertEqual(sidecar.requests["NextEvents"][0].timeout_ms, 2500)

    def test_ack_now_and_close(self):
        sidecar = FakeEventSidecar([v1.EventBatch(events=[openat(41, sync=True), openat(42, sync=True), openat(43)])])
        vmi = self.connect(sidecar)
        with vmi.events(7) as stream:
            self.assertEqual(next(stream).id, 41)
            stream.ack_now()
            self.assertEqual(next(stream).id, 42)
        # Leaving the block acks 42, handed out, and nothing else: 43 is not sync.
        self.assertEqual([list(a.events) for a in sidecar.requests["Ack"]], [[41], [42]])
        self.assertEqual(list(stream), [])
        self.assertEqual(len(sidecar.requests["NextEvents"]), 1)

    def test_close_acks_buffered_sync_events_and_tolerates_a_gone_hold(self):
        hold_over = v1.Error(code=3, message="no unacked event")
        sidecar = FakeEventSidecar(
            [v1.EventBatch(events=[openat(51, sync=True), openat(52, sync=True)])],
            {"Ack": Status(5, hold_over.message, hold_over)},
        )
        vmi = self.connect(sidecar)
        stream = vmi.events(7)
        self.assertEqual(next(stream).id, 51)
        stream.close()  # the sidecar's NOT_FOUND is swallowed: the guest is not held any more
        self.assertEqual([list(a.events) for a in sidecar.requests["Ack"]], [[51, 52]])


if __name__ == "__main__":
    unittest.main()
