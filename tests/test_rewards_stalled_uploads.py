"""Issue 28: 256 stalled uploads from 8 loopback addresses used to make every other score a 503 until
body_timeout_s (30 s) answered them. Now uploads hold at most `upload_share` of the server's slots, the one
furthest behind the minimum rate is cut off first (408, JSON), and a well-behaved client is served meanwhile."""

from __future__ import annotations

import json

import pytest

from tests.attacks import answer_so_far, open_stalled_uploads, score_meanwhile
from tests.servers import standalone_service

TOKEN = "stall-test-token"
SOURCES, PER_SOURCE = 8, 32  # 127.0.9.1-8 x 32: each address at the default max_connections_per_client
SCORES = 40
# the issue asks p99 <= 1 s; measured 0.05 s quiet (CPU, 2 cores); the bound leaves room for a loaded shared machine
P99_BOUND_S = 2.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Defaults (limit_concurrency 256, upload_share 0.75 -> 192 uploads), but a grace long enough that only the
    share, not the minimum rate, acts while the test runs."""
    config = tmp_path_factory.mktemp("serve") / "rewards.yaml"
    config.write_text(
        f"rewards:\n  - name: jpeg_compressibility\nsettings:\n  auth_token: {TOKEN}\n  upload_grace_s: 300\n"
        "  body_timeout_s: 300\n"
    )
    with standalone_service(config, wait_s=30) as (base, port):
        yield base, port


def test_256_stalled_uploads_from_8_addresses_do_not_block_a_well_behaved_client(service):
    base, port = service
    stalled = open_stalled_uploads(port, SOURCES, PER_SOURCE, TOKEN)
    try:
        scores = score_meanwhile(base, SCORES, TOKEN)
        answers = [answer_so_far(s) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    held = sum(a is None for a in answers)
    p99 = scores.quantile(0.99)
    print(
        f"\n{len(stalled)} stalled uploads: {held} still held after {SCORES} scores; scores p50 "
        f"{scores.quantile(0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert scores.statuses == [200] * SCORES, scores.statuses
    assert p99 <= P99_BOUND_S, f"p99 {p99:.2f} s"
    # at most 192 uploads at once: the first 64 extra were cut off as they came; each score may cut off one more
    assert 192 - SCORES <= held <= 192, held
    for answer in (a for a in answers if a is not None):
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), head
        assert "cut off this upload to make room" in json.loads(body)["detail"]
