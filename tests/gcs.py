"""pytest plugin: a Google Cloud Storage emulator on loopback for the gs:// tests.

Load it with ``pytest_plugins = ["tests.gcs"]`` in ``tests/conftest.py``. It provides:

- ``gcs_emulator`` (session scope): starts ``gcp-storage-emulator`` in memory on a free loopback
  port with one bucket, points both Google Cloud Storage client stacks at it, and stops it at the
  end of the session. Yields a :class:`GcsEmulator`.
- ``gcs_dir`` (function scope): a fresh ``gs://<bucket>/<test name>-<random>`` prefix per test, so
  tests never see each other's objects.

How both client stacks are made to talk to the emulator, and quickly (times measured on the
project's machine):

- ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` sends every request of google-cloud-storage (the
  client under Beam's ``gcsio``/``GCSFileSystem``) and of gcsfs to the emulator.
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` must be set before gcsfs is first imported (the test
  conftest sets it): otherwise ``gcsfs.GCSFileSystem`` is the experimental class that first probes
  the bucket type over gRPC, which the emulator does not serve, and each first call on a bucket
  hangs for 60 s. (``transforms.storage`` itself uses the plain ``gcsfs.core.GCSFileSystem`` with
  anonymous access whenever ``STORAGE_EMULATOR_HOST`` is set, so it is fast either way.)
- Beam resolves Google credentials once per process through ``google.auth.default()``, retried
  4 times with exponential backoff when none are found: 26 s per process whenever
  ``google-auth-httplib2`` is installed (it comes with ``apache-beam[gcp]``), whether or not
  ``--no_auth`` is given; ``NO_GCE_CHECK`` does not help since the wait is Beam's retry loop, not
  the metadata-server probe. The fixture therefore writes an application-default-credentials file
  of type ``authorized_user`` that holds a dummy access token expiring in 2999, and points
  ``GOOGLE_APPLICATION_CREDENTIALS`` at it: ``google.auth.default()`` returns at once, the token
  never needs refreshing (nothing reaches the network), and the emulator ignores the
  ``Authorization`` header. ``GOOGLE_CLOUD_PROJECT`` silences the "no project ID" warning.
  Measured: Beam's first ``FileSystems.create`` on gs:// takes 0.01 s instead of 26 s.

The variables are set in ``os.environ`` for the whole session (and restored afterwards), so the
worker subprocesses of ``--direct_running_mode=multi_processing`` inherit them.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "clipbeam-test"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GcsEmulator:
    """A running storage emulator.

    Attributes:
        endpoint: Base URL of the emulator, e.g. ``http://127.0.0.1:40123``.
        bucket: The bucket created at start-up.
        env: The environment variables the session sets for clients (also inherited by
            subprocesses started during the session).
    """

    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, *parts: str) -> str:
        """Returns ``gs://<bucket>/<parts joined by '/'>``."""
        return "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts)])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bucket_ready(endpoint: str, bucket: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{bucket}", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _write_dummy_adc(path: Path) -> None:
    # An authorized-user ADC file whose access token is already issued and never expires, so
    # google-auth never calls the token endpoint. The strings are placeholders, not secrets.
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "clipbeam-emulator",
                "client_secret": "clipbeam-emulator",
                "refresh_token": "clipbeam-emulator",
                "token": "clipbeam-emulator",
                "expiry": "2999-01-01T00:00:00Z",
            }
        )
    )


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """Starts gcp-storage-emulator on loopback and points the GCS clients at it."""
    workdir = tmp_path_factory.mktemp("gcs-emulator")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / "emulator.log"
    adc_path = workdir / "application_default_credentials.json"
    _write_dummy_adc(adc_path)
    command = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        "--in-memory",
        f"--default-bucket={BUCKET}",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _bucket_ready(endpoint, BUCKET):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"gcp-storage-emulator did not start on {endpoint} within "
                    f"{_START_TIMEOUT_S:.0f} s (exit code {process.poll()}). Is the test extra "
                    f"installed (pip install -e '.[test]')? Its log:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        env = {
            "STORAGE_EMULATOR_HOST": endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_APPLICATION_CREDENTIALS": str(adc_path),
            "GOOGLE_CLOUD_PROJECT": "clipbeam-test",
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield GcsEmulator(endpoint=endpoint, bucket=BUCKET, env=env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gcs_dir(gcs_emulator: GcsEmulator, request: pytest.FixtureRequest) -> str:
    """A gs:// prefix (no trailing slash) that no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:60]
    return gcs_emulator.url(f"{name}-{uuid.uuid4().hex[:8]}")
