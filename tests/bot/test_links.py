"""The link key (made once, 0600, its own random bytes) and the page addresses reports carry."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.core.links import link_opens_pipeline
from bot.host.config import Config, Tree, Web
from bot.reporting.page_links import LINK_KEY_FILE, link_key_path, page_url, read_link_key
from tests.conftest import REPO_ROOT
from workers.errors import ConfigError


def config_for(root: Path, **web: object) -> Config:
    trees = [Tree(name="secret", url="https://example.org/secret.git", private=True),
             Tree(name="open", url="https://example.org/open.git")]  # fmt: skip
    return Config(data_dir=root, trees=trees, web=Web(public_url="https://ci.example.org/", **web))  # type: ignore[arg-type]


def test_the_key_is_made_on_first_use_readable_by_its_owner_only(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    key = read_link_key(config, tmp_path)
    path = tmp_path / LINK_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and bytes.fromhex(key.decode())  # 32 random bytes, as hex
    assert read_link_key(config, tmp_path) == key
    assert list(tmp_path.iterdir()) == [path]  # no scratch file left behind


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from bot.host.config import Config; "
            "from bot.reporting.page_links import read_link_key; "
            "d = Path(sys.argv[1]); print(read_link_key(Config(data_dir=d), d).decode())")  # fmt: skip
    racers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT) for _ in range(6)]  # fmt: skip
    keys = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert len(keys) == 1 and keys == {(tmp_path / LINK_KEY_FILE).read_text().strip()}


def test_a_configured_key_file_is_used_and_a_bad_one_is_a_clear_error(tmp_path: Path) -> None:
    configured = tmp_path / "keys" / "link.key"
    configured.parent.mkdir()
    configured.write_text("x" * 40 + "\n")
    config = config_for(tmp_path / "data", link_key_file=configured)
    assert link_key_path(config, tmp_path / "data") == configured
    assert read_link_key(config, tmp_path / "data") == b"x" * 40
    assert not (tmp_path / "data" / LINK_KEY_FILE).exists()  # nothing made beside a configured key

    short = tmp_path / "short.key"
    short.write_text("too short\n")
    with pytest.raises(ConfigError, match=r"web.link_key_file: .*short.key holds 9 bytes, at least 32"):
        read_link_key(config_for(tmp_path / "d2", link_key_file=short), tmp_path / "d2")
    with pytest.raises(ConfigError, match=r"web.link_key_file: cannot read .*missing.key"):
        read_link_key(config_for(tmp_path / "d3", link_key_file=tmp_path / "missing.key"), tmp_path / "d3")


def test_a_private_trees_page_url_is_signed_for_its_pipeline_and_a_public_ones_is_plain(tmp_path: Path) -> None:
    config = config_for(tmp_path, link_lifetime_days=7)
    assert page_url(config, tmp_path, "/jobs/5", "open", 3) == "https://ci.example.org/jobs/5"
    assert page_url(config, tmp_path, "/jobs/5", "not configured", 3) == "https://ci.example.org/jobs/5"
    signed = urlsplit(page_url(config, tmp_path, "/jobs/5", "secret", 3))
    assert (signed.scheme, signed.netloc, signed.path) == ("https", "ci.example.org", "/jobs/5")
    [token] = parse_qs(signed.query)["token"]
    key = read_link_key(config, tmp_path)
    assert link_opens_pipeline(key, token, 3, int(time.time()))
    assert not link_opens_pipeline(key, token, 4, int(time.time()))
    assert int(token.split(".")[1]) == pytest.approx(time.time() + 7 * 86400, abs=5)


def test_operator_digests_must_be_sha256_hex() -> None:
    with pytest.raises(ValueError, match=r"entries \[1\] are not sha256 hex digests"):
        Web(operator_token_sha256=["a" * 64, "my-plain-token"])
    assert Web(operator_token_sha256=["A" * 64]).operator_token_sha256 == ["a" * 64]
