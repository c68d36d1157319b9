"""A write batch's frames, packed into one stream entry, come back as they went in:
each with its own request id, sort, ``seq``, DONE count and text or bytes."""

from __future__ import annotations

from trio_agent.cluster.store import FrameWrite, StoredSort
from trio_agent.cluster.store_codec import pack_frames, unpack_frames


def test_a_batch_of_interleaved_requests_unpacks_frame_for_frame() -> None:
    # Requests alternate and repeat: the packer encodes a request id once per run
    # of frames of the same request, so a run that ends must switch the id.
    frames = [
        FrameWrite("s1", "r1", StoredSort.STREAM, 0, "héllo", "n1"),
        FrameWrite("s1", "r1", StoredSort.STREAM, 1, "world", "n1"),
        FrameWrite("s1", "r22", StoredSort.AUDIO, 0, b"\x00\x01\xff", "n1"),
        FrameWrite("s1", "r1", StoredSort.DONE, -1, '{"type":"DONE"}', "n1", frames=2),
        FrameWrite("s1", "r22", StoredSort.STREAM, 1, "", "n1"),
        FrameWrite("s1", "r22", StoredSort.DONE, -1, b"done", "n1", frames=2),
    ]

    unpacked = unpack_frames(pack_frames(frames), entry_id="7-0", node_id="n1")

    assert [(f.request_id, f.sort, f.seq, f.data, f.frames) for f in unpacked] == [
        (f.request_id, f.sort, f.seq, f.data, f.frames) for f in frames
    ]
    assert {(f.entry_id, f.node_id) for f in unpacked} == {("7-0", "n1")}


def test_nothing_packs_to_nothing() -> None:
    assert unpack_frames(pack_frames([]), entry_id="1-0", node_id="n") == []
