"""`rlcm rewards serve` hook: config files load, and the standalone server answers real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rewards_service.cli import load_config
from rewards_service.codec import encode_batch
from rewards_service.scorers import jpeg_size_kb

SERVE_CONFIGS = sorted((Path(__file__).parents[1] / "cluster" / "serve").glob("*.yaml"))


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_files_are_valid(path):
    config = load_config(str(path))
    assert config.app_name == "rewards" and config.rewards
    assert config.settings.host == "127.0.0.1"


def test_config_files_cover_every_reward():
    names = {r.name for p in SERVE_CONFIGS for r in load_config(str(p)).rewards}
    assert {"jpeg_compressibility", "jpeg_incompressibility", "aesthetic", "llava_bertscore"} <= names


def test_default_config_and_plain_format(tmp_path):
    assert [r.name for r in load_config(None).rewards] == ["jpeg_compressibility", "jpeg_incompressibility"]
    plain = tmp_path / "c.yaml"
    plain.write_text("rewards:\n  - name: jpeg_compressibility\n    version: '4'\nsettings:\n  max_images_per_request: 2\n")
    config = load_config(str(plain))
    assert config.rewards[0].version == "4" and config.settings.max_images_per_request == 2
    plain.write_text("rewards:\n  - name: jpeg_compressibility\n    replicas: 2\n")
    with pytest.raises(ValueError, match="replicas"):
        load_config(str(plain))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_server_over_real_http():
    port = _free_port()
    code = f"from rewards_service.cli import serve_main; serve_main(None, True, '127.0.0.1', {port})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
        body = httpx.post(f"{base}/v1/score/jpeg_incompressibility", json={"prompts": ["a", "b"], "images": encode_batch(images)}).json()
        assert body["rewards"] == [jpeg_size_kb(im) for im in images]
        bad = httpx.post(f"{base}/v1/score/jpeg_incompressibility", content=b"x", headers={"content-type": "text/plain"})
        assert bad.status_code == 415
    finally:
        proc.terminate()
        proc.wait(10)
