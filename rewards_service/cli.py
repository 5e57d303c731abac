"""`rlcm rewards serve`: the reward service on Ray Serve, or standalone under uvicorn (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rewards_service.serve_config import DEFAULT_CONFIG, RewardServiceConfig


def load_config(path: str | None) -> RewardServiceConfig:
    """A RewardServiceConfig from YAML: either its own fields, or a Serve config file whose
    application uses `import_path: rewards_service.serve:app_builder` (its `args` are the config)."""
    if path is None:
        return DEFAULT_CONFIG.model_copy(deep=True)
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    if "applications" in data:
        apps = [a for a in data["applications"] if str(a.get("import_path", "")).startswith("rewards_service.serve")]
        if len(apps) != 1:
            raise ValueError(
                f"{path}: expected one application with import_path rewards_service.serve:app_builder, found "
                f"{len(apps)}"
            )
        app = apps[0]
        data = {
            **app.get("args", {}),
            "app_name": app.get("name", "rewards"),
            "route_prefix": app.get("route_prefix", "/"),
        }
    return RewardServiceConfig.model_validate(data)


def serve_main(config_path: str | None, standalone: bool, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the rewards of `config_path` (default: the two JPEG rewards) on host:port until interrupted."""
    config = load_config(config_path)
    config.settings = config.settings.model_copy(update={"host": host, "port": port})
    if standalone:
        import uvicorn

        from rewards_service.app import create_app
        from rewards_service.guard import guarded_protocol
        from rewards_service.registry import build_scorer

        scorers = {r.name: build_scorer(r.scorer or r.name, version=r.version, **r.options) for r in config.rewards}
        settings = config.settings
        uvicorn.run(
            create_app(scorers, settings),
            host=host,
            port=port,
            http=guarded_protocol(settings),
            timeout_keep_alive=settings.keep_alive_timeout_s,
        )
        return
    import os

    import ray

    from rewards_service.serve import run_service

    if not ray.is_initialized():  # join only the cluster RAY_ADDRESS names, never one recorded in /tmp/ray
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    run_service(config, blocking=True)
