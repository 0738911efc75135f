"""``coder serve`` stats lines: Triton's Prometheus metrics (and the model's bank-cache metrics) -> one line."""

import http.server
import threading

import pytest

from coder.deploy.serve_stats import backends_line, parse_backends, parse_metrics, read_stats, stats_line

SAMPLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="coder",version="1"} 12
nv_inference_request_success{model="other",version="1"} 99
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="coder",version="1"} 1
nv_inference_count{model="coder",version="1"} 14
nv_inference_exec_count{model="coder",version="1"} 9
# HELP coder_bank_cache_entries class lists (request parameter `classes`) whose banks are cached
# TYPE coder_bank_cache_entries gauge
coder_bank_cache_entries{instance="coder_0_0",model="coder",version="1"} 1
coder_bank_cache_entries{instance="coder_0_1",model="coder",version="1"} 1
coder_bank_cache_bytes{instance="coder_0_0",model="coder",version="1"} 61952
coder_bank_cache_bytes{instance="coder_0_1",model="coder",version="1"} 61952
coder_bank_cache_limit_bytes{instance="coder_0_0",model="coder",version="1"} 268435456
coder_bank_cache_limit_bytes{instance="coder_0_1",model="coder",version="1"} 268435456
coder_bank_cache_hits_total{instance="coder_0_0",model="coder",version="1"} 5
coder_bank_cache_misses_total{instance="coder_0_0",model="coder",version="1"} 1
coder_bank_cache_misses_total{instance="coder_0_1",model="coder",version="1"} 1
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
# TYPE coder_backend_info gauge
coder_backend_info{backend="openvino-bf16",instance="coder_0_0",model="coder",version="1"} 1
coder_backend_info{backend="openvino-bf16",instance="coder_0_1",model="coder",version="1"} 1
coder_backend_info{backend="cpu",instance="other_0",model="other",version="1"} 1
"""


def test_parse_sums_the_coder_series_over_instances():
    s = parse_metrics(SAMPLE)
    assert s == {"requests": 12, "failed": 1, "images": 14, "batches": 9, "class_lists": 2,
                 "bank_cache_bytes": 2 * 61952, "limit_bytes": 2 * 2**28, "hits": 5, "misses": 2}
    assert stats_line(s) == ("stats: 12 requests (1 failed), 14 images in 9 batches; class-list banks: 2 lists, "
                             "0.118 MB of 512 MB, 5 hits, 2 misses")


def test_backends_each_instance_runs():
    found = parse_backends(SAMPLE)
    assert found == {"coder_0_0": "openvino-bf16", "coder_0_1": "openvino-bf16"}
    assert backends_line(found) == "backend: openvino-bf16 (2 instances)"
    assert backends_line({"a": "cpu"}) == "backend: cpu (1 instance)" and backends_line({}) is None


def test_an_ensemble_has_no_cache_part_and_counts_read_in_the_singular():
    s = parse_metrics('nv_inference_request_success{model="coder",version="1"} 1\n'
                      'nv_inference_count{model="coder",version="1"} 1\n'
                      'nv_inference_exec_count{model="coder",version="1"} 1\n'
                      'nv_inference_request_success{model="coder_gate",version="1"} 1\n')
    assert stats_line(s) == "stats: 1 request, 1 image in 1 batch"
    assert stats_line(parse_metrics("")) == "stats: 0 requests, 0 images in 0 batches"


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = SAMPLE

    def do_GET(self):
        data = self.body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def metrics_url():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()
    srv.server_close()


def test_serve_prints_stats_when_they_change_and_on_exit(metrics_url, capsys):
    """``_run``'s loop: a stats line after an interval only when the numbers changed; the last one on Ctrl-C."""
    from coder.cli.serve import _run

    class Server:
        log_path = "server.log"
        waits = 0
        stopped = False

        def start(self):
            pass

        def wait_ready(self, timeout):
            pass

        def url(self, kind="http", local=False):
            return metrics_url if kind == "metrics" else f"{kind}://127.0.0.1:1"

        def wait(self, timeout=None):
            assert timeout == 5.0
            self.waits += 1
            if self.waits == 3:
                _Metrics.body = SAMPLE.replace("} 12\n", "} 13\n", 1)  # one more request
            if self.waits == 5:
                raise KeyboardInterrupt  # what the CLI's signal policy raises on SIGINT
            return None

        def stop(self):
            self.stopped = True

    srv = Server()
    try:
        _run(srv, 1.0, 5.0)
    finally:
        _Metrics.body = SAMPLE
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("stats:")]
    assert [line.split(",")[0] for line in lines] == ["stats: 12 requests (1 failed)", "stats: 13 requests (1 failed)",
                                                      "stats: 13 requests (1 failed)"]  # changed, changed, on exit
    assert "0.118 MB of 512 MB" in lines[0] and srv.stopped and out.rstrip().endswith("stopped")
    assert out.splitlines()[1] == "backend: openvino-bf16 (2 instances)"  # right after `ready:`


def test_unreadable_metrics_print_nothing(capsys):
    from coder.cli.serve import _print_stats

    assert read_stats("http://127.0.0.1:1/metrics", timeout=1) is None
    shown = [None]
    _print_stats(type("S", (), {"url": lambda self, kind, local=False: "http://127.0.0.1:1/metrics"})(), shown,
                 final=True)
    assert capsys.readouterr().out == "" and shown == [None]
