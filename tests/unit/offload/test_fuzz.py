"""The fuzz harness (offload/fuzz.py): seeded corruptions of a valid frame are refused with their
status, none crashes the server, and a valid request afterwards is answered correctly."""

from __future__ import annotations

import torch

from edgeadapt.offload.fuzz import KINDS, REFUSED, Corruptor, fuzz_server
from edgeadapt.offload.serve import ServeConfig, load_chain, start_server
from edgeadapt.offload.transport import encode_frame

TOKEN = b"fuzz-token-0123"
MAX_FRAME = 256 * 1024


def test_a_hundred_malformed_frames_are_refused_and_the_server_still_answers_correctly():
    chain = load_chain("tiny-resnet")
    running = start_server(chain, TOKEN, ServeConfig(port=0, max_frame_bytes=MAX_FRAME, max_batch=64))
    try:
        x = torch.randn(2, *chain.input_shapes[1], generator=torch.Generator().manual_seed(0))
        frame = encode_frame(x, {"start": 1, "end": len(chain)})
        report = fuzz_server(f"127.0.0.1:{running.port}", TOKEN, frame, chain.run(1, len(chain), x), n=100,
                             seed=1, max_frame_bytes=MAX_FRAME)
    finally:
        running.stop(grace=0)
    assert report.crashes == 0 and report.crashed == [] and report.final_ok, report.to_dict()
    assert sum(report.by_kind.values()) == 100 and set(report.by_kind) == set(KINDS)
    assert set(report.by_status) <= {"OK", *REFUSED}
    assert report.by_status.get("INVALID_ARGUMENT", 0) > 50
    for kind in ("oversize", "token", "dtype", "shape", "fields"):  # never a valid frame after these
        assert "OK" not in report.status_by_kind[kind], (kind, report.status_by_kind[kind])
    assert set(report.status_by_kind["oversize"]) == {"RESOURCE_EXHAUSTED"}
    assert set(report.status_by_kind["token"]) == {"UNAUTHENTICATED"}
    # the servicer answered or refused all 101 (a crash would show as INTERNAL or no answer)
    assert running.servicer.refused >= report.by_status.get("INVALID_ARGUMENT", 0)


def test_a_wrong_final_answer_counts_as_a_crash():
    chain = load_chain("tiny-resnet")
    running = start_server(chain, TOKEN, ServeConfig(port=0, max_frame_bytes=MAX_FRAME))
    try:
        x = torch.randn(1, *chain.input_shapes[1])
        frame = encode_frame(x, {"start": 1, "end": len(chain)})
        report = fuzz_server(f"127.0.0.1:{running.port}", TOKEN, frame, chain.run(1, len(chain), x) + 1, n=3,
                             max_frame_bytes=MAX_FRAME, alive=lambda: False)
    finally:
        running.stop(grace=0)
    assert not report.final_ok and report.process_alive is False and report.crashes == 2


def test_the_corruptions_are_seeded():
    frame = encode_frame(torch.ones(2, 3, 4), {"start": 1, "end": 3})
    a = [Corruptor(frame, TOKEN, 1024, seed=5).make() for _ in range(1)]
    one, two = Corruptor(frame, TOKEN, 1024, seed=5), Corruptor(frame, TOKEN, 1024, seed=5)
    assert [one.make() for _ in range(50)] == [two.make() for _ in range(50)] and a
    assert all(kind in KINDS for kind, _, _ in [one.make() for _ in range(20)])
