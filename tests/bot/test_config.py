"""labgate.yaml loading, key-path errors, schema kept in sync, `labgate config check`."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.cli.main import main
from bot.host.config import Config, config_json_schema, load_config, parse_config
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    config = load_config(REPO / "config" / "labgate.example.yaml")
    assert config.database_url and config.database_url.startswith("postgresql")
    assert [dc.name for dc in config.device_classes] == ["qemu-x86_64", "board-x86"]
    board = config.device_classes[1].labgrid
    assert board is not None and board.environment == REPO / "config" / ".." / "lab" / "envs" / "board.yaml.j2"
    assert board.environment.is_file()
    assert config.caps.max_build_s == 1800


def _keys(model: type[BaseModel], path: str = "") -> list[str]:
    """Every key of the config schema, as a dotted path (list items as their model's keys)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(f"{path}{name}")
        pending: list[object] = [field.annotation]
        while pending:
            kind = pending.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                keys += _keys(kind, f"{path}{name}.")
            else:
                pending += typing.get_args(kind)
    return keys


def test_example_config_shows_every_key_of_the_schema() -> None:
    # The loader refuses a key the schema lacks; this is the other way round: a key added to the schema
    # (bot/host/config.py) must be shown in the example too, set or in a comment.
    text = (REPO / "config" / "labgate.example.yaml").read_text()
    shown = {name for name in re.findall(r"(?:^|[\s{,#])([a-z_0-9]+):", text, re.M)}
    missing = [key for key in _keys(Config) if key.split(".")[-1] not in shown]
    assert missing == [], f"config/labgate.example.yaml lacks {missing}"


def test_example_config_sets_up_the_mailing_list_route() -> None:
    config = load_config(REPO / "config" / "labgate.example.yaml")
    assert config.patchwork is not None and config.smtp is not None
    project = config.patchwork.projects[0]
    tree = config.tree(project.tree)
    assert tree is not None and project.tag_branches == {"net-next": "main"}
    assert tree.plan_file is not None and tree.plan_file.is_file()  # the loader read and checked it
    assert tree.poll_staging and tree.staging_branches and tree.mail.report and tree.mail.keyring is not None
    assert config.smtp.starttls and config.smtp.username and config.smtp.password_file is not None


def test_no_file_means_embedded_defaults() -> None:
    config = load_config(None)
    assert config.database_url is None and config.broker_url is None
    assert config.device_classes[0].tags == {"arch": "x86_64", "platform": "qemu"}


def test_every_error_is_reported_with_its_key_path() -> None:
    text = "caps: {max_build_s: -1}\ntrees:\n  - name: hello\ndevice_classes:\n  - {name: Q, tags: {}}\nextra: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.yaml")
    lines = str(info.value).splitlines()
    assert "site.yaml: caps.max_build_s: Input should be greater than 0" in lines
    assert "site.yaml: trees.0.url: Field required" in lines
    assert any(line.startswith("site.yaml: device_classes.0.name: String should match") for line in lines)
    assert "site.yaml: extra: Extra inputs are not permitted" in lines


def test_invalid_yaml_and_wrong_top_level() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("caps: [", "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: \(top level\): expected a mapping"):
        parse_config("- 1\n", "x.yaml")


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "labgate.yaml"
    path.write_text("data_dir: state\n")
    assert load_config(path).resolved_data_dir() == (tmp_path / "state").resolve()


def test_schema_file_is_in_sync_with_the_models() -> None:
    on_disk = json.loads((REPO / "config" / "labgate.schema.json").read_text())
    assert on_disk == config_json_schema(), "regenerate: labgate config schema > config/labgate.schema.json"


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(REPO / "config" / "labgate.example.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("web: {port: 70000}\n")
    assert main(["config", "check", str(bad)]) == 2
    assert f"{bad}: web.port: Input should be less than or equal to 65535" in capsys.readouterr().err


def test_defaults_roundtrip_through_the_model() -> None:
    assert Config.model_validate(Config().model_dump()) == Config()


def test_a_board_class_needs_its_places_and_a_qemu_class_has_none() -> None:
    with pytest.raises(ConfigError, match="needs a `labgrid:` section"):
        parse_config("device_classes: [{name: b, tags: {arch: x86_64}, lab: labgrid}]")
    with pytest.raises(ConfigError, match="needs a `labgrid:` section"):
        parse_config("device_classes: [{name: q, tags: {}, labgrid: {coordinator: 'h:1', place_tags: {a: b}, "
                     "environment: e.yaml}}]")


def test_a_tree_has_at_least_one_branch() -> None:
    """A series' base-commit: trailer is checked against the tree's branches; with none to check, any
    commit of the mirror (a fork's pull request head, refs/pull/*) would be built as a trusted base."""
    text = "trees:\n  - {name: t, url: 'https://example.org/t.git', branches: []}\n"
    with pytest.raises(ConfigError, match=r"trees\.0\.branches: List should have at least 1 item"):
        parse_config(text, "site.yaml")


def test_two_trees_never_share_a_mirror() -> None:
    """A worker names a tree's mirror by the name made a file name: 'org/linux' and 'org_linux' are one."""
    text = ("trees:\n  - {name: org/linux, url: 'https://example.org/a.git'}\n"
            "  - {name: org_linux, url: 'https://example.org/b.git', private: true}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"trees: .*share one mirror.*'org/linux' and 'org_linux'"):
        parse_config(text, "site.yaml")
