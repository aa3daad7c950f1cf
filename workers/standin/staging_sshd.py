"""The exporter host's SSH for image staging: an sshd on 127.0.0.1 for one dedicated user, and its key.

labgrid stages images to an exporter host the way its ManagedFile does (ssh, then rsync to
/var/cache/labgrid/<user>/<sha256>/, then a symlink into the provider's directory). On a real
exporter host that is the host's own sshd; for the stand-in lab it is this one: its own port,
host key and authorized key, only `labgate-stage` may log in, by key only, without forwarding.
The private key goes to the lab worker alone (LABGATE_LAB_SSH_CONFIG names the ssh config that
holds it); builds never see it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabSetupError

STAGE_USER = "labgate-stage"
STAGE_HOME = Path("/var/lib/labgate-stage")
LABGRID_CACHE = Path("/var/cache/labgrid")  # ManagedFile's copies land below it, per client user
_UP_CAP_S = 10.0


@dataclass
class StagingSshd:
    process: subprocess.Popen[bytes]
    port: int
    host_alias: str  # what the exporter calls its host (`--hostname`), mapped to 127.0.0.1:port
    ssh_config: Path  # for the lab worker: LABGATE_LAB_SSH_CONFIG
    keys_dir: Path  # the authorized key, where the staging user can read it

    def stop(self) -> None:
        # Connections are served by children that outlive the listener; ending them also ends a
        # killed worker's ssh master (labgrid's ControlPersist would keep it 300 s).
        for child in _children_of(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.keys_dir, ignore_errors=True)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def ensure_stage_user() -> pwd.struct_passwd:
    """The dedicated staging user (made once per host; needs root)."""
    try:
        return pwd.getpwnam(STAGE_USER)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise LabSetupError(f"user {STAGE_USER} does not exist; scripts/setup.sh makes it (as root)")
    subprocess.run(["useradd", "--system", "--home-dir", str(STAGE_HOME), "--create-home", "--shell", "/bin/sh",
                    STAGE_USER], check=True, capture_output=True)  # fmt: skip
    # '*': no password to log in with, but not a locked account (sshd refuses those even for keys).
    subprocess.run(["usermod", "-p", "*", STAGE_USER], check=True, capture_output=True)
    return pwd.getpwnam(STAGE_USER)


def start_staging_sshd(directory: Path, host_alias: str = "labgate-standin") -> StagingSshd:
    """Start an sshd on 127.0.0.1 (a free port) for the staging user; keys and configs go in `directory`."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or shutil.which("ssh-keygen") is None or shutil.which("rsync") is None:
        raise LabSetupError("image staging needs sshd, ssh-keygen and rsync: apt-get install openssh-server rsync")
    user = ensure_stage_user()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    LABGRID_CACHE.mkdir(parents=True, exist_ok=True)
    LABGRID_CACHE.chmod(0o1777)  # like /tmp: each client user's copies in a directory of its own
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    host_key, client_key = directory / "host_ed25519", directory / "stage_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labgate-standin", "-f", str(key)],
                           check=True, capture_output=True)  # fmt: skip
    # sshd reads the authorized keys as the user logging in: out of `directory`, which may sit below
    # a directory only root can walk (a test's tmp_path).
    keys_dir = Path(tempfile.mkdtemp(prefix="labgate-stage-keys-"))
    keys_dir.chmod(0o755)
    authorized = keys_dir / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o644)
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nAllowUsers {STAGE_USER}\nPermitRootLogin no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        # The key files live in a directory root made; StrictModes would also walk /tmp (1777).
        "StrictModes no\nAllowTcpForwarding no\nX11Forwarding no\nAllowAgentForwarding no\nPermitTTY no\n"
    )
    with open(directory / "sshd.log", "wb") as log_file:
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    _wait_listening(port, process)
    (directory / "known_hosts").write_text(f"{host_alias} {Path(f'{host_key}.pub').read_text().split(' #')[0]}")
    client_config = directory / "ssh_config"
    client_config.write_text(
        f"Host {host_alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user.pw_name}\n"
        f"  IdentityFile {client_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {directory / 'known_hosts'}\n"
        f"  HostKeyAlias {host_alias}\n  BatchMode yes\n"
    )
    return StagingSshd(process=process, port=port, host_alias=host_alias, ssh_config=client_config, keys_dir=keys_dir)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a race with others is possible, and rare)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _UP_CAP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabSetupError(f"the staging sshd exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise LabSetupError(f"the staging sshd did not listen on 127.0.0.1:{port}")
