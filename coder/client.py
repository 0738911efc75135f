"""Send images to a ``coder serve`` / Triton server with ``tritonclient`` (HTTP or gRPC).

Results are dicts with the fields of ``coder classify --json`` that the server returns
(``file, label, name, top_k, stage1_scores, gap, reranked, error``); a request the server
rejected (a corrupt image) gives ``error`` and no prediction, never an exception; so does a server that
cannot be reached (refused, unknown host, timed out), over HTTP and gRPC alike.

>>> c = CoderClient("127.0.0.1:8000", protocol="http")                # doctest: +SKIP
>>> c.classify_file("cat.jpg")["name"]
'tabby cat'

Command line: ``python -m coder.client IMAGE... [--url 127.0.0.1:8001 --protocol grpc] [--classes cat,dog]``.
Needs the ``[triton]`` extra (tritonclient[http,grpc]); one client object per thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .errors import one_line

MODEL = "coder"
OUTPUTS = ("label", "name", "top_k", "stage1_scores", "gap", "reranked")


class CoderClient:
    """One connection to the server. ``timeout``: seconds per request (network and inference)."""

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", model: str = MODEL,
                 timeout: float = 60.0):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol {protocol!r}: http or grpc")
        if protocol == "http":
            _check_url(url)
        self.protocol, self.model, self.timeout, self.url = protocol, model, timeout, url
        if protocol == "http":
            import tritonclient.http as mod

            self.client = mod.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            import tritonclient.grpc as mod

            self.client = mod.InferenceServerClient(url)
        self.mod = mod

    def _request(self, images: list[bytes], classes: str | None):
        inp = self.mod.InferInput("image", [len(images), 1], "BYTES")
        data = np.array([[b] for b in images], dtype=np.object_)
        params = {"parameters": {"classes": classes}} if classes is not None else {}
        if self.protocol == "http":
            inp.set_data_from_numpy(data, binary_data=True)
            outs = [self.mod.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
            return self.client.infer(self.model, [inp], outputs=outs, timeout=int(self.timeout * 1e6), **params)
        inp.set_data_from_numpy(data)
        outs = [self.mod.InferRequestedOutput(n) for n in OUTPUTS]
        return self.client.infer(self.model, [inp], outputs=outs, client_timeout=self.timeout, **params)

    def classify_bytes(self, images: list[bytes], names: list[str] | None = None,
                       classes: str | list[str] | None = None) -> list[dict]:
        """One request carrying ``len(images)`` images; on a server error every record gets ``error``.

        ``classes`` (``"cat,dog,zebra"`` or a list) is the request's own class list: the KServe v2
        request parameter ``classes``, which the default layout's model builds and caches a bank for.
        """
        from tritonclient.utils import InferenceServerException

        names = names or [f"#{i}" for i in range(len(images))]
        if classes is not None and not isinstance(classes, str):
            classes = ",".join(classes)
        try:
            res = self._request(images, classes)
        except InferenceServerException as e:
            return [{"file": n, "error": e.message() or str(e)} for n in names]
        except _transport_errors() as e:  # HTTP: the socket's own errors (gRPC reports them as above)
            why = one_line(e, 200) if str(e).strip() else type(e).__name__
            return [{"file": n, "error": f"cannot reach the server at {self.url} over http ({why})"} for n in names]
        arrays = {n: res.as_numpy(n) for n in OUTPUTS}
        return [{"file": name, "label": int(arrays["label"][i, 0]),
                 "name": arrays["name"][i, 0].decode("utf-8"), "top_k": arrays["top_k"][i].tolist(),
                 "stage1_scores": arrays["stage1_scores"][i].tolist(), "gap": float(arrays["gap"][i, 0]),
                 "reranked": bool(arrays["reranked"][i, 0]), "error": None} for i, name in enumerate(names)]

    def classify_file(self, path: str | os.PathLike, classes: str | list[str] | None = None) -> dict:
        """One image file, one request (the server batches concurrent requests itself)."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            return {"file": str(path), "error": f"cannot read: {e.strerror or e}"}
        return self.classify_bytes([data], [str(path)], classes)[0]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "CoderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_url(url: str) -> None:
    """An HTTP ``host:port[/path]`` with a numeric port (``[::1]:8000`` for IPv6), else one ValueError line."""
    host, sep, port = url.split("/", 1)[0].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--url {url!r}: host:port, e.g. 127.0.0.1:8000")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client (geventhttpclient) raises when the server is down, unknown or too slow."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError)
    try:
        from gevent import Timeout

        errors += (Timeout,)
    except ImportError:  # pragma: no cover - tritonclient[http] depends on gevent
        pass
    return errors


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per image; exit 1 if any image was rejected."""
    p = argparse.ArgumentParser(prog="python -m coder.client", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8000 http, :8001 grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--classes", default=None, help="this request's own class list, comma-separated (cat,dog,zebra)")
    a = p.parse_args(argv)
    url = a.url or ("127.0.0.1:8000" if a.protocol == "http" else "127.0.0.1:8001")
    try:
        if a.protocol == "http":
            _check_url(url)
    except ValueError as e:
        p.error(str(e))  # one usage line, exit 2
    failed = 0
    with CoderClient(url, a.protocol, timeout=a.timeout) as c:
        for path in a.images:
            record = c.classify_file(path, a.classes)
            failed += record["error"] is not None
            sys.stdout.write(json.dumps(record) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
