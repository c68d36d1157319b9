"""The pure parts of resumption: the replay buffer and the resume book."""

from __future__ import annotations

from trio_agent.server.replay import FrameSort, Gap, Replay, ReplayBuffer, Unknown
from trio_agent.server.resume_book import AckLedger, Redeemed, ResumeBook


def _stream(buffer: ReplayBuffer, request_id: str, count: int, size: int = 10) -> None:
    for seq in range(count):
        buffer.written(request_id, FrameSort.STREAM, seq, f"{request_id}{seq}".ljust(size, "."))


def test_replay_gives_every_frame_after_last_seq_then_the_done() -> None:
    buffer = ReplayBuffer(10_000)
    buffer.request_started("r1")
    _stream(buffer, "r1", 5)
    buffer.written("r1", FrameSort.DONE, -1, "done")
    replay = buffer.replay("r1", 2)
    assert isinstance(replay, Replay)
    assert replay.frames == ("r13.......", "r14.......", "done")
    assert replay.ended


def test_replay_of_a_running_request_has_no_done() -> None:
    buffer = ReplayBuffer(10_000)
    buffer.request_started("r1")
    _stream(buffer, "r1", 3)
    assert buffer.replay("r1", 2) == Replay((), ended=False)
    assert buffer.replay("r1", -1) == Replay(("r10.......", "r11.......", "r12......."), False)


def test_audio_keeps_its_own_sequence() -> None:
    buffer = ReplayBuffer(10_000)
    buffer.request_started("r1")
    buffer.written("r1", FrameSort.STREAM, 0, "s0")
    buffer.written("r1", FrameSort.AUDIO, 0, b"a0")
    buffer.written("r1", FrameSort.AUDIO, 1, b"a1")
    buffer.written("r1", FrameSort.STREAM, 1, "s1")
    assert buffer.replay("r1", 0, 0) == Replay((b"a1", "s1"), False)


def test_the_buffer_is_bounded_in_bytes_and_evicts_the_oldest() -> None:
    buffer = ReplayBuffer(100)
    buffer.request_started("r1")
    _stream(buffer, "r1", 25)
    assert buffer.bytes_held <= 100
    assert buffer.frames_held == 10
    # The last ten are held: a client that has seq 14 gets 15..24.
    replay = buffer.replay("r1", 14)
    assert isinstance(replay, Replay)
    assert len(replay.frames) == 10
    # One that has only seq 13 lacks seq 14, which is gone.
    assert buffer.replay("r1", 13) == Gap(frames_written=25, ended=False)


def test_an_evicted_done_is_a_gap() -> None:
    buffer = ReplayBuffer(25)
    buffer.request_started("r1")
    _stream(buffer, "r1", 1)
    buffer.written("r1", FrameSort.DONE, -1, "d" * 10)
    buffer.request_started("r2")
    _stream(buffer, "r2", 2)
    assert buffer.replay("r1", 0) == Gap(frames_written=1, ended=True)


def test_a_frame_larger_than_the_buffer_is_a_gap_at_once() -> None:
    buffer = ReplayBuffer(5)
    buffer.request_started("r1")
    _stream(buffer, "r1", 1)
    assert buffer.frames_held == 0
    assert buffer.replay("r1", -1) == Gap(frames_written=1, ended=False)
    assert buffer.replay("r1", 0) == Replay((), False)


def test_an_unknown_request_and_a_reused_id() -> None:
    buffer = ReplayBuffer(1000, max_requests=2)
    assert buffer.replay("nope", -1) == Unknown()
    buffer.request_started("r1")
    _stream(buffer, "r1", 3)
    buffer.request_started("r1")
    assert buffer.replay("r1", -1) == Replay((), False)
    buffer.request_started("r2")
    buffer.request_started("r3")
    assert buffer.replay("r1", -1) == Unknown()


def test_a_token_is_spent_by_the_resume_that_presents_it() -> None:
    book = ResumeBook()
    token = book.open("s1")
    assert len(token) >= 22  # >= 128 bits in base64url
    book.detached("s1", deadline=30.0)
    verdict, new = book.redeem("s1", token, now=1.0)
    assert verdict is Redeemed.OK
    assert new is not None
    assert new != token
    # The racing second connection with the same token loses.
    assert book.redeem("s1", token, now=1.0) == (Redeemed.DENIED, None)
    assert book.redeem("s1", new, now=1.0)[0] is Redeemed.OK


def test_a_window_that_has_passed_and_an_unknown_session() -> None:
    book = ResumeBook()
    token = book.open("s1")
    book.detached("s1", deadline=30.0)
    assert book.redeem("s1", token, now=30.0) == (Redeemed.UNKNOWN, None)
    assert book.redeem("s2", token, now=0.0) == (Redeemed.UNKNOWN, None)
    book.close("s1")
    assert "s1" not in book


def test_wrong_tokens_are_limited() -> None:
    book = ResumeBook(max_denied=2)
    token = book.open("s1")
    assert book.redeem("s1", "wrong", now=0)[0] is Redeemed.DENIED
    assert book.redeem("s1", "wrong", now=0)[0] is Redeemed.DENIED
    assert book.redeem("s1", token, now=0)[0] is Redeemed.DENIED


def test_the_ack_ledger_reports_acks_of_a_dropped_connection_once() -> None:
    ledger = AckLedger(limit=2)
    ledger.acknowledged("c1", ["r1"])
    ledger.connection_dropped()
    ledger.acknowledged("c2", [])
    assert ledger.take_unconfirmed() == {"c1": ["r1"]}
    assert ledger.take_unconfirmed() == {}
    ledger.acknowledged("c3", ["r3"])
    ledger.acknowledged("c4", ["r4"])
    ledger.connection_dropped()
    assert ledger.take_unconfirmed() == {"c3": ["r3"], "c4": ["r4"]}
