"""``fal-client`` pointed at fastsvd by fal's own host variables alone, over fastsvd's own TLS.

fal-client builds ``https://{FAL_QUEUE_RUN_HOST}/`` and ``https://{FAL_RUN_HOST}/`` at import,
so the server must speak https: ``fastsvd serve --tls-cert/--tls-key`` with a certificate from a
throwaway CA made here (trustme), which the client trusts through ``SSL_CERT_FILE``. The client
runs in its own process, so the variables take effect as they would for a user.
"""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest
import trustme
from PIL import Image

from tests.support.bodies import I2V, SMALL, T2V
from tests.support.servers import Server, start_server, stop_server

pytestmark = pytest.mark.process  # starts server processes

# the client's script, run by a Python of its own: the test's endpoints and sizes, as values
CLIENT = (
    f"T2V, I2V, SMALL = {T2V!r}, {I2V!r}, {SMALL!r}\n"
    + """
import json, sys
import fal_client

updates = []
subscribed = fal_client.subscribe(
    T2V, {"prompt": "a rocket", "seed": 5, **SMALL}, with_logs=True, on_queue_update=updates.append
)
ran = fal_client.run(T2V, arguments={"prompt": "a rocket", "seed": 9, **SMALL})
picture = fal_client.encode_file(sys.argv[1])  # a data: URI: no upload, so no storage host
animated = fal_client.subscribe(I2V, {"image_url": picture, **SMALL})
print(json.dumps({
    "subscribed": subscribed,
    "updates": [type(u).__name__ for u in updates],
    "logs": [line["message"] for line in updates[-1].logs or []],
    "ran": ran,
    "animated": animated,
    "data_uri": picture[:22],
}))
"""
)


@dataclass
class TlsServer:
    server: Server
    ca_file: Path

    def trusting(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """``fastsvd serve`` (embedded backend) with a certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key_file))
    running = start_server(
        folder / "server",
        FASTSVD_TLS_CERT=str(cert_file),
        FASTSVD_TLS_KEY=str(key_file),
        _CA_FILE=str(ca_file),
    )
    try:
        yield TlsServer(running, ca_file)
    finally:
        stop_server(running)


def test_fal_client_configured_by_host_variables_only(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    server = tls_server.server
    assert server.url.startswith("https://")
    host = server.url.removeprefix("https://")
    picture = tmp_path / "red.png"
    Image.new("RGB", (96, 64), (230, 20, 40)).save(picture)
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
        "FAL_KEY": server.key,
        "FAL_QUEUE_RUN_HOST": host,  # submit, status, result, cancel
        "FAL_RUN_HOST": f"{host}/run",  # fal_client.run: fastsvd serves it under /run
        "SSL_CERT_FILE": str(tls_server.ca_file),
    }
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(picture)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["subscribed"]["seed"] == 5
    assert got["updates"][-1] == "Completed"
    assert got["logs"][-1] == "video: step 3/3"
    assert got["ran"]["seed"] == 9
    assert got["data_uri"] == "data:image/png;base64,"
    url = got["animated"]["video"]["url"]
    assert url.startswith(f"{server.url}/files/")  # result URLs carry the https scheme
    video = httpx.get(url, verify=tls_server.trusting()).content
    with av.open(io.BytesIO(video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(int(frame[..., 0].mean()) - 230) < 8  # the data: URI's picture reached the model


def test_plain_http_is_not_served_on_the_tls_port(tls_server: TlsServer) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.server.url.replace("https://", "http://") + "/health", timeout=5)


def fastsvd_serve(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastsvd.cli", "serve", *args],
        env={**os.environ, "FASTSVD_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tls_needs_both_files_and_readable_ones(tmp_path: Path) -> None:
    half = fastsvd_serve("--tls-cert", str(tmp_path / "cert.pem"), data_dir=tmp_path)
    assert half.returncode == 1
    assert half.stderr.strip() == (
        "error: TLS needs both a certificate and its key: --tls-cert and --tls-key "
        "(FASTSVD_TLS_CERT and FASTSVD_TLS_KEY), or neither"
    )
    (tmp_path / "cert.pem").write_text("not a certificate")
    bad = fastsvd_serve(
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "cert.pem"),
        data_dir=tmp_path,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: cannot load the TLS certificate")
    assert len(bad.stderr.strip().splitlines()) == 1
