"""Group commit for the workflow worker: items submitted one by one are written in batches, in
submission order, one batch at a time; each caller gets its own item's outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

from rabbitry.errors import MessageError, StorageError
from rabbitry.events.batcher import Batcher


class Recorder:
    def __init__(self, delay: float = 0.01, fail: set[int] | None = None) -> None:
        self.delay = delay
        self.fail = fail or set()
        self.batches: list[list[int]] = []
        self.writing = 0
        self.most_at_once = 0

    async def write(self, items: Sequence[int]) -> list[BaseException | None]:
        self.writing += 1
        self.most_at_once = max(self.most_at_once, self.writing)
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        self.writing -= 1
        return [MessageError(f"bad {i}") if i in self.fail else None for i in items]


async def test_items_are_written_in_submission_order_in_growing_batches_one_at_a_time() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.write, max_size=50)

    submitted: list[asyncio.Future[None]] = []
    for i in range(200):
        await asyncio.sleep(0.0005 if i % 10 == 0 else 0)  # callers arrive over time
        submitted.append(asyncio.ensure_future(batcher.submit(i)))
    await asyncio.gather(*submitted)
    assert [i for batch in recorder.batches for i in batch] == list(range(200))
    assert recorder.most_at_once == 1
    assert max(map(len, recorder.batches)) <= 50
    assert len(recorder.batches) < 200  # batched, not one by one


async def test_each_caller_gets_its_own_outcome() -> None:
    recorder = Recorder(fail={3})
    batcher = Batcher(recorder.write, max_size=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["MessageError"] + [
        "NoneType"
    ] * 2
    assert str(results[3]) == "bad 3"


async def test_a_list_submitted_at_once_keeps_its_order_among_single_items_with_each_outcome() -> (
    None
):
    recorder = Recorder(fail={4})
    batcher = Batcher(recorder.write, max_size=3)
    first = asyncio.ensure_future(batcher.submit(0))
    listed = asyncio.ensure_future(batcher.submit_all([1, 2, 3, 4, 5]))
    last = asyncio.ensure_future(batcher.submit(6))
    await first
    outcomes = await listed
    await last
    assert [i for batch in recorder.batches for i in batch] == list(range(7))
    assert max(map(len, recorder.batches)) <= 3  # the list is cut into the writer's batches
    assert [None if o is None else str(o) for o in outcomes] == [None, None, None, "bad 4", None]
    assert await batcher.submit_all([]) == []


async def test_a_writer_that_fails_as_a_whole_fails_every_item_of_its_batch_only() -> None:
    calls = 0

    async def write(items: Sequence[int]) -> list[BaseException | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("database down")
        return [None] * len(items)

    batcher = Batcher(write, max_size=10)
    first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, StorageError) for r in first)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [None] * 3


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder.write, max_size=10)
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], done[2], done[3]] == [None, None, None]


def test_max_size_must_be_positive() -> None:
    async def write(items: Sequence[int]) -> list[BaseException | None]:
        return [None] * len(items)

    with pytest.raises(ValueError):
        Batcher(write, max_size=0)


async def test_a_held_batch_is_written_again_before_any_later_one() -> None:
    written: list[list[int]] = []
    failures = iter([RuntimeError("database down"), RuntimeError("still down")])

    async def write(items: Sequence[int]) -> list[BaseException | None]:
        written.append(list(items))
        failure = next(failures, None) if items[0] == 1 else None
        return [failure] * len(items)

    batcher = Batcher(write, max_size=2, hold=lambda exc: isinstance(exc, RuntimeError))
    await asyncio.gather(*(batcher.submit(i) for i in range(1, 5)))
    # The first batch three times (two failures), and only then the second.
    assert written == [[1, 2], [1, 2], [1, 2], [3, 4]]


async def test_an_outcome_that_is_not_held_is_its_items_own() -> None:
    async def write(items: Sequence[int]) -> list[BaseException | None]:
        return [ValueError("bad") if i == 2 else None for i in items]

    batcher = Batcher(write, max_size=10, hold=lambda exc: isinstance(exc, RuntimeError))
    results = await asyncio.gather(
        *(batcher.submit(i) for i in range(1, 4)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results] == ["NoneType", "ValueError", "NoneType"]


async def test_a_held_batch_whose_callers_gave_up_is_not_written_again() -> None:
    attempts = 0
    tried = asyncio.Event()

    async def write(items: Sequence[int]) -> list[BaseException | None]:
        nonlocal attempts
        attempts += 1
        tried.set()
        return [RuntimeError("down")] * len(items)

    batcher = Batcher(write, max_size=10, hold=lambda exc: True)
    waiting = asyncio.create_task(batcher.submit(1))
    await tried.wait()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.5)  # longer than the first pauses: no attempt after the cancel
    assert attempts <= 2


class KeyedRecorder:
    """Records which keys are being written at once; item = (key, n)."""

    def __init__(self, delay: float = 0.01, held: set[int] | None = None) -> None:
        self.delay = delay
        self.held = held or set()  # keys whose batches fail (held) on their first attempt
        self.failed: set[int] = set()
        self.writing: list[set[int]] = []
        self.most_at_once = 0
        self.order: list[tuple[int, int]] = []  # what was written, in commit order

    async def write(self, items: Sequence[tuple[int, int]]) -> list[BaseException | None]:
        keys = {key for key, _ in items}
        assert all(not keys & other for other in self.writing), "a key in two batches at once"
        self.writing.append(keys)
        self.most_at_once = max(self.most_at_once, len(self.writing))
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.writing.remove(keys)
        failing = (keys & self.held) - self.failed
        if failing:
            self.failed |= failing
            return [StorageError("injected")] * len(items)
        self.order.extend(items)
        return [None] * len(items)


def by_key(order: list[tuple[int, int]]) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {}
    for key, n in order:
        result.setdefault(key, []).append(n)
    return result


async def test_batches_of_other_keys_are_written_at_once_and_each_key_keeps_its_order() -> None:
    recorder = KeyedRecorder()
    batcher: Batcher[tuple[int, int]] = Batcher(
        recorder.write, max_size=8, key=lambda item: item[0], in_flight=2
    )
    submitted: list[asyncio.Future[None]] = []
    for n in range(10):
        await asyncio.sleep(0.001 if n % 3 == 0 else 0)
        for key in range(40):
            submitted.append(asyncio.ensure_future(batcher.submit((key, n))))
    await asyncio.gather(*submitted)
    assert recorder.most_at_once == 2
    assert by_key(recorder.order) == {key: list(range(10)) for key in range(40)}


async def test_without_a_key_one_batch_at_a_time_whatever_in_flight_allows() -> None:
    recorder = Recorder(delay=0.005)
    batcher = Batcher(recorder.write, max_size=5, in_flight=3)
    submitted: list[asyncio.Future[None]] = []
    for i in range(40):
        await asyncio.sleep(0.001 if i % 3 == 0 else 0)
        submitted.append(asyncio.ensure_future(batcher.submit(i)))
    await asyncio.gather(*submitted)
    assert recorder.most_at_once == 1
    assert [i for batch in recorder.batches for i in batch] == list(range(40))


async def test_a_held_batch_is_written_again_before_later_items_of_its_keys_only() -> None:
    # Key 1's first batch fails (held); key 2's batches go on meanwhile, and key 1's later
    # items wait for its batch to be stored.
    recorder = KeyedRecorder(held={1})
    batcher: Batcher[tuple[int, int]] = Batcher(
        recorder.write, max_size=4, hold=lambda exc: True, key=lambda item: item[0], in_flight=2
    )
    submitted = [asyncio.ensure_future(batcher.submit((1, 0)))]
    await asyncio.sleep(0.001)  # key 1's first batch, alone, is in the writer
    submitted.append(asyncio.ensure_future(batcher.submit((2, 0))))
    for n in range(1, 20):
        await asyncio.sleep(0.002)
        for key in (1, 2):
            submitted.append(asyncio.ensure_future(batcher.submit((key, n))))
    await asyncio.gather(*submitted)
    assert recorder.failed == {1}
    assert by_key(recorder.order) == {1: list(range(20)), 2: list(range(20))}
    # Key 2 was stored past where key 1 stood while key 1's batch waited out its pause.
    first_of_1 = recorder.order.index((1, 0))
    assert any(key == 2 and n > 0 for key, n in recorder.order[:first_of_1])


def test_in_flight_must_be_positive() -> None:
    async def write(items: Sequence[int]) -> list[BaseException | None]:
        return [None] * len(items)

    with pytest.raises(ValueError):
        Batcher(write, max_size=1, in_flight=0)


async def test_paused_it_lets_the_batch_being_written_end_and_starts_none_until_resumed() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder.write, max_size=10)
    first = asyncio.ensure_future(batcher.submit_all(range(5)))
    await asyncio.sleep(0.01)  # the first batch is being written
    later = asyncio.ensure_future(batcher.submit_all(range(5, 8)))
    await batcher.pause()
    assert first.done() and await first == [None] * 5
    await asyncio.sleep(0.1)
    assert recorder.batches == [[0, 1, 2, 3, 4]] and not later.done()
    batcher.resume()
    assert await later == [None] * 3
    assert recorder.batches == [[0, 1, 2, 3, 4], [5, 6, 7]]


async def test_items_whose_callers_gave_up_while_paused_are_not_written() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.write, max_size=10)
    await batcher.pause()
    gone = asyncio.ensure_future(batcher.submit_all([1, 2]))
    await asyncio.sleep(0)
    gone.cancel()  # a handed-over connection's handler calls are cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    batcher.resume()
    assert await batcher.submit_all([3]) == [None]
    assert recorder.batches == [[3]]
