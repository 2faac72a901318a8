"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1.

Not a mock of the client: s3fs (the `s3` extra) talks HTTP to moto's S3 API, with
IAM authentication enforced once the server is set up, so wrong credentials and
read-only users are refused as S3 refuses them. One server per test session
(`s3_server` fixture in conftest.py); each test takes a fresh bucket.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

READ_ONLY = ["s3:GetObject", "s3:ListBucket", "s3:HeadObject", "s3:GetBucketLocation"]


@dataclass
class S3Server:
    """Where the server listens and the credentials of its two users."""

    endpoint: str
    writer: dict[str, str] = field(default_factory=dict)  # key, secret: s3:* on every bucket
    reader: dict[str, str] = field(default_factory=dict)  # key, secret: reads only

    def options(self, user: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        """storage_options for s3fs: the endpoint and a user's keys (the writer's by default)."""
        user = self.writer if user is None else user
        return {"endpoint_url": self.endpoint, **user, **extra}

    def env(self, user: dict[str, str] | None = None) -> dict[str, str]:
        """The usual AWS_* variables for a subprocess (botocore reads them)."""
        user = self.writer if user is None else user
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": user["key"],
            "AWS_SECRET_ACCESS_KEY": user["secret"],
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket (made with the writer's keys)."""
        import s3fs

        name = f"b-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.options()).mkdir(name)
        return name


def _iam_user(iam: Any, name: str, actions: list[str] | str) -> dict[str, str]:
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def one_request_at_a_time(app: Any) -> Any:
    """A WSGI app that serves one request at a time.

    moto checks a PUT's If-None-Match / If-Match, then stores the object, with no lock
    between (moto/s3/responses.py, put_object): on its threaded server two conditional
    PUTs racing for one key can both pass, which S3 (each PUT atomic) never allows.
    bench/bench_remote.py --locks measured it: 2 of 100 trials had two winners on
    moto's own server, 0 of 100 with this wrapper. Serialising the requests gives
    moto S3's atomicity; the server still runs in a thread of its own.
    """
    guard = threading.Lock()

    def serve(environ: Any, start_response: Any) -> Any:
        with guard:
            return list(app(environ, start_response))

    return serve


def atomic_server(port: int = 0) -> Any:
    """A started moto server (in a thread of this process) whose requests are atomic."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class Atomic(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = one_request_at_a_time(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    server = Atomic(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def start() -> tuple[Any, S3Server]:
    """Start moto's server on a free port; make the two users; enforce auth."""
    import boto3

    server = atomic_server()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="setup", aws_secret_access_key="setup",
    )  # fmt: skip
    info = S3Server(endpoint, _iam_user(iam, "writer", "s3:*"), _iam_user(iam, "reader", READ_ONLY))
    # From here on every request is authenticated (the server runs in this process).
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    return server, info


def running() -> Iterator[S3Server]:
    """The fixture's body: a started server, stopped afterwards."""
    server, info = start()
    try:
        yield info
    finally:
        server.stop()
