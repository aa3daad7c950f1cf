"""What `labgate up` gives a lab worker serving board classes: their coordinators and its staging settings,
never the control side's secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.host.bring_up import Services
from bot.host.config import parse_config
from bot.host.stores import open_runtime

ENVIRONMENT = Path(__file__).resolve().parents[2] / "lab" / "envs" / "board.yaml.j2"


def _services(tmp_path: Path) -> Services:
    def board(name: str, coordinator: str) -> str:
        return (f"  - {{name: {name}, tags: {{platform: board}}, lab: labgrid, "
                f"labgrid: {{coordinator: '{coordinator}', place_tags: {{board: {name}}}, "
                f"environment: '{ENVIRONMENT}'}}}}\n")  # fmt: skip

    qemu = "  - {name: qemu-x86_64, tags: {arch: x86_64}}\n"
    config = parse_config(f"data_dir: '{tmp_path}'\ndevice_classes:\n{qemu}" + board("imx8", "lab-a.example:20408")
                          + board("rpi4", "lab-b.example:20408"))  # fmt: skip
    return Services(open_runtime(config, create=False), "redis://127.0.0.1:6379/15", None)


def test_a_board_class_worker_gets_its_coordinators_and_staging_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABGATE_LAB_SSH_CONFIG", "/etc/labgate/lab-ssh/config")
    monkeypatch.setenv("LABGATE_LAB_USER", "rack-2")
    monkeypatch.setenv("LABGATE_DATABASE_URL", "postgresql://labgate:secret@db/labgate")
    monkeypatch.setenv("GITHUB_PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----")
    services = _services(tmp_path)
    env = services.board_env("lab.imx8")
    assert env == {"LABGATE_LAB_COORDINATORS": "lab-a.example:20408",
                   "LABGATE_LAB_SSH_CONFIG": "/etc/labgate/lab-ssh/config", "LABGATE_LAB_USER": "rack-2"}  # fmt: skip
    assert "secret" not in str(env) and "PRIVATE KEY" not in str(env)
    both = services.board_env("lab.imx8+lab.rpi4")
    assert both["LABGATE_LAB_COORDINATORS"] == "lab-a.example:20408 lab-b.example:20408"
    assert services.board_env("lab.qemu-x86_64") == {}
    assert services.board_env("build") == {}
