"""`rlcm rewards serve` hook: config files load, and the standalone server answers real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from rewards_service.cli import load_config
from rewards_service.codec import encode_batch
from rewards_service.scorers.jpeg import jpeg_size_kb
from tests.servers import standalone_service

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
    plain.write_text(
        "rewards:\n  - name: jpeg_compressibility\n    version: '4'\nsettings:\n  max_images_per_request: 2\n"
    )
    config = load_config(str(plain))
    assert config.rewards[0].version == "4" and config.settings.max_images_per_request == 2
    plain.write_text("rewards:\n  - name: jpeg_compressibility\n    replicas: 2\n")
    with pytest.raises(ValueError, match="replicas"):
        load_config(str(plain))


def test_standalone_server_over_real_http():
    with standalone_service() as (base, _):
        images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
        body = httpx.post(
            f"{base}/v1/score/jpeg_incompressibility", json={"prompts": ["a", "b"], "images": encode_batch(images)}
        ).json()
        assert body["rewards"] == [jpeg_size_kb(im) for im in images]
        bad = httpx.post(
            f"{base}/v1/score/jpeg_incompressibility", content=b"x", headers={"content-type": "text/plain"}
        )
        assert bad.status_code == 415
