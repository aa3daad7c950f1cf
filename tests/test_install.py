"""labgate as `pip install .` leaves it (not editable, a fresh venv) runs `labgate try` on examples/hello.

Everything labgate reads besides Python code must come with the package and be found next to the
installed modules, never through the repository: the alembic revisions, the DUT runner, the web
templates, the git askpass helper, the labgrid environment template. The install is made from a
copy of what a clone carries (tracked files, and new ones git does not ignore) and run from
elsewhere, so that nothing can be imported from the checkout by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO_ROOT

# Run by the installed interpreter: where each resource was found, and whether it is there.
WHERE = """
import json, os, bot, bot.store.db as db, bot.web.app as web, lab.initramfs as initramfs, lab.runner as runner
import workers.checkout as checkout
from pathlib import Path
found = {
    "bot": bot.__file__,
    "migrations": sorted(p.name for p in (db.MIGRATIONS_DIR / "versions").glob("*.py")),
    "migrations_dir": str(db.MIGRATIONS_DIR),
    "dut": {name: os.access(initramfs.DUT_DIR / name, os.X_OK) for name in ("init", "labgate-run")},
    "dut_dir": str(initramfs.DUT_DIR),
    "askpass": os.access(checkout.ASKPASS, os.X_OK),
    "askpass_path": str(checkout.ASKPASS),
    "templates": sorted(p.name for p in Path(web.__file__).with_name("templates").glob("*.html")),
    "envs": sorted(p.name for p in runner._ENVS.glob("*.j2")),
}
print(json.dumps(found))
"""


def clone_like_copy(dest: Path) -> Path:
    """The files a clone of this working tree would hold: tracked ones and new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not in a clone of it either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def outside_env() -> dict[str, str]:
    """This environment without what would let the checkout's modules in."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.slow
@pytest.mark.needs("root", "the sandbox drops to slot uids, as the worker does in CI")
@pytest.mark.needs("sandbox-users", "builds and QEMU run as the slot uids setup.sh creates")
@pytest.mark.needs("qemu", "the test job boots examples/hello's tests")
@pytest.mark.needs("busybox", "the DUT initramfs holds the host's static busybox")
def test_pip_installed_labgate_tries_examples_hello(tmp_path: Path, hello_repo: Path) -> None:
    source = clone_like_copy(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], cwd=tmp_path,
                               env=outside_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    install_s = time.monotonic() - started
    assert installed.returncode == 0, installed.stdout + installed.stderr
    shutil.rmtree(source)  # nothing may be read from it after the install

    where = subprocess.run([str(venv / "bin" / "python"), "-c", WHERE], cwd=tmp_path, env=outside_env(),
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    found = json.loads(where)
    site = str(venv / "lib")
    assert found["bot"].startswith(site), f"bot imported from {found['bot']}, not the venv"
    for key in ("migrations_dir", "dut_dir", "askpass_path"):
        assert found[key].startswith(site), (key, found[key])
    shipped = sorted(p.name for p in (REPO_ROOT / "bot" / "store" / "migrations" / "versions").glob("*.py"))
    assert found["migrations"] == shipped
    assert found["dut"] == {"init": True, "labgate-run": True} and found["askpass"] is True
    assert found["templates"] == sorted(p.name for p in (REPO_ROOT / "bot" / "web" / "templates").glob("*.html"))
    assert found["envs"] == sorted(p.name for p in (REPO_ROOT / "lab" / "envs").glob("*.j2"))  # QEMU and boards

    config = tmp_path / "labgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ncaps: {{max_build_s: 120, max_job_s: 120}}\n")
    started = time.monotonic()
    tried = subprocess.run(
        [str(venv / "bin" / "labgate"), "try", str(hello_repo), "--base", "main",
         "--patch", str(EXAMPLES / "hello" / "patches" / "pass.patch"), "--config", str(config)],
        cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    try_s = time.monotonic() - started
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "started private workers" in tried.stdout  # its own workers: the installed code ran every job
    assert "result: pass (head " in tried.stdout, tried.stdout
    print(f"pip install {install_s:.0f} s, labgate try {try_s:.0f} s")
