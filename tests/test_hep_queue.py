"""The one bounded admission in front of every HEP collector (sinks/hep/queue.py), with
packets alone: no socket, no sender thread."""

from __future__ import annotations

import threading

import pytest

from captagent_tls.sinks.hep import HepConfigError, PacketQueue, QueueLimits


def packets(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def test_a_full_queue_refuses_the_new_packet_never_an_older_one():
    queue = PacketQueue(QueueLimits(max_messages=3))
    sent = packets(5)
    assert [queue.offer(p) for p in sent] == [True, True, True, False, False]
    assert list(queue.waiting) == sent[:3]
    assert (queue.held, queue.dropped) == (3, 2)


def test_the_byte_limit_counts_every_byte_held():
    queue = PacketQueue(QueueLimits(max_bytes=250))
    assert queue.offer(b"a" * 100) and queue.offer(b"b" * 150)  # exactly full
    assert not queue.offer(b"c")
    assert (queue.held, queue.held_bytes, queue.dropped) == (2, 250, 1)


def test_a_packet_larger_than_the_byte_limit_is_dropped_even_when_empty():
    queue = PacketQueue(QueueLimits(max_bytes=10))
    assert not queue.offer(b"x" * 11)
    assert (queue.held, queue.dropped) == (0, 1)


def test_in_flight_packets_hold_their_room_until_settled():
    queue = PacketQueue(QueueLimits(max_messages=2))
    a, b, c = packets(3)
    assert queue.offer(a) and queue.offer(b)
    assert queue.take() == [a, b]
    assert (queue.held, queue.in_flight) == (2, 2)
    assert not queue.offer(c)  # written, not acknowledged: still held
    queue.settle(1, len(a), delivered=True)
    assert (queue.held, queue.in_flight, queue.sent) == (1, 1, 1)
    assert queue.offer(c)


def test_taking_with_settle_frees_the_room_at_once():
    queue = PacketQueue(QueueLimits(max_messages=2))
    a, b, c = packets(3)
    queue.offer(a)
    queue.offer(b)
    assert queue.take(settle=True) == [a, b]
    assert (queue.held, queue.held_bytes, queue.in_flight) == (0, 0, 0)
    assert queue.offer(c)


def test_a_batch_stops_at_its_byte_budget_but_holds_at_least_one_packet():
    queue = PacketQueue()
    small = packets(10, size=100)
    big = b"B" * 1000
    for p in [big, *small]:
        queue.offer(p)
    assert queue.take(500) == [big]  # over the budget alone
    assert queue.take(250) == small[:3]  # 100, 200, 300: the one that reaches it is in
    assert queue.take() == small[3:]
    assert queue.in_flight == 11


def test_packets_put_back_are_sent_first_in_their_order():
    queue = PacketQueue()
    sent = packets(6)
    for p in sent[:4]:
        queue.offer(p)
    first = queue.take(200)  # two packets in flight
    queue.offer(sent[4])
    queue.put_back(first)
    assert queue.in_flight == 0
    assert queue.take() == sent[:5]


def test_a_run_of_drops_is_reported_once_and_again_after_a_packet_fits():
    reports: list[int] = []
    queue = PacketQueue(QueueLimits(max_messages=1), on_full=lambda: reports.append(1))
    a, b, c, d = packets(4)
    queue.offer(a)
    queue.offer(b)
    queue.offer(c)
    assert len(reports) == 1
    queue.take(settle=True)
    assert queue.offer(d)  # fits: the run of drops is over
    queue.offer(a)
    assert len(reports) == 2
    assert queue.dropped == 3


def test_once_closing_every_packet_offered_is_dropped_at_shutdown():
    queue = PacketQueue()
    queue.offer(b"held")
    queue.close(deadline=123.0)
    assert not queue.offer(b"late")
    assert (queue.dropped, queue.dropped_at_shutdown) == (0, 1)
    assert queue.wait_for_work(0) == (1, True, 123.0)
    queue.close(deadline=456.0)  # the first deadline holds
    assert queue.shutdown_deadline() == 123.0


def test_finalize_counts_what_is_held_once_and_nothing_settles_after_it():
    queue = PacketQueue()
    sent = packets(5)
    for p in sent:
        queue.offer(p)
    in_flight = queue.take(200)
    queue.close(deadline=0.0)
    assert queue.finalize() == 5
    assert queue.finalize() == 0
    queue.settle(len(in_flight), 200, delivered=True)  # a late acknowledgement
    assert (queue.sent, queue.dropped_at_shutdown, queue.held) == (0, 5, 0)
    assert queue.in_flight == 0


def test_settling_undelivered_packets_counts_them_as_dropped_at_shutdown():
    queue = PacketQueue()
    for p in packets(3):
        queue.offer(p)
    queue.take()
    queue.settle(3, 300, delivered=False)
    assert (queue.held, queue.held_bytes, queue.dropped_at_shutdown) == (0, 0, 3)


class WatchedCondition(threading.Condition):
    """A condition that says when someone starts waiting on it: no clock needed."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.someone_waits = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.someone_waits.set()
        return super().wait(timeout)


def test_reading_a_file_waits_for_room_instead_of_dropping():
    # wait_for_room is long: it bounds the test only if the queue never made room
    queue = PacketQueue(QueueLimits(max_messages=1, wait_for_room=60.0))
    queue.cond = WatchedCondition()
    a, b = packets(2)
    assert queue.offer(a)

    def sender() -> None:
        queue.cond.someone_waits.wait()  # the offer below is waiting for room
        queue.take(settle=True)

    thread = threading.Thread(target=sender)
    thread.start()
    admitted = queue.offer(b)
    thread.join()
    assert admitted and list(queue.waiting) == [b] and queue.dropped == 0


def test_closing_while_waiting_for_room_drops_at_shutdown():
    queue = PacketQueue(QueueLimits(max_messages=1, wait_for_room=60.0))
    queue.cond = WatchedCondition()
    queue.offer(b"first")

    def closer() -> None:
        queue.cond.someone_waits.wait()
        queue.close(deadline=0.0)

    thread = threading.Thread(target=closer)
    thread.start()
    admitted = queue.offer(b"second")
    thread.join()
    assert not admitted and (queue.dropped, queue.dropped_at_shutdown) == (0, 1)


def test_live_capture_never_waits_for_room():
    queue = PacketQueue(QueueLimits(max_messages=1))
    queue.cond = WatchedCondition()
    queue.offer(b"first")
    assert not queue.offer(b"second")
    assert not queue.cond.someone_waits.is_set()


def test_a_sender_waiting_for_work_wakes_for_the_first_packet():
    queue = PacketQueue()
    queue.cond = WatchedCondition()
    got: list[tuple[int, bool, float]] = []
    thread = threading.Thread(target=lambda: got.append(queue.wait_for_work()))
    thread.start()
    queue.cond.someone_waits.wait()
    queue.offer(b"work")
    thread.join()
    assert got[0][:2] == (1, False)


@pytest.mark.parametrize("limits", [{"max_messages": 0}, {"max_bytes": 0}])
def test_limits_below_one_message_or_one_byte_are_a_configuration_error(limits):
    with pytest.raises(HepConfigError, match="at least 1 message and 1 byte"):
        QueueLimits(**limits)
