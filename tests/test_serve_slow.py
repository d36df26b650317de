"""tools/serve.py for real: uvicorn on an ephemeral loopback port under load, and the page in headless
Chromium (Debian's `chromium`; skipped when it is absent)."""

import os
import threading
import time

import numpy as np
import pytest

from conftest import run_cli
from serve_helpers import check_page, chromium, live_server

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

CLIENTS, QUERIES_EACH = 16, 50


def retrieve(argv):
    from tools.retrieve import main
    return main(argv)


@pytest.fixture(scope="module")
def region_service(short_region_checkpoint, region_data, tmp_path_factory):
    import torch
    from serving.service import Service
    index = tmp_path_factory.mktemp("serve_slow") / "t.index"
    assert run_cli(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                              f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device",
                              "cpu"]) == 0
    captions = open(f"{region_data[0]}/f30k_precomp/test_caps.txt", encoding="utf-8").read().splitlines()
    return Service(str(index), device=torch.device("cpu")), index, captions


@pytest.mark.slow
def test_load_on_loopback_16_clients_x_50_queries(region_service):
    """Every answer of 16 concurrent clients equals the single-client one; 0 errors; p50 / p95 printed."""
    service, _, captions = region_service
    queries = captions[::3][:12]
    with live_server(service) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            single = {q: client.get("/api/search", params={"q": q, "k": 5, "rerank_k": 8}).json()["results"]
                      for q in queries}
            explained = client.get("/api/explain", params={"q": queries[0], "id": 0}).json()["parts"]
        latencies, errors, mismatches = [], [], []

        def run(offset):
            with httpx.Client(base_url=url, timeout=60) as client:
                for step in range(QUERIES_EACH):
                    q = queries[(offset + step) % len(queries)]
                    started = time.perf_counter()
                    try:
                        if step % 10 == 9:     # the explanation shares the model: it must not disturb a search
                            response = client.get("/api/explain", params={"q": queries[0], "id": 0})
                            same = response.json().get("parts") == explained
                        else:
                            response = client.get("/api/search", params={"q": q, "k": 5, "rerank_k": 8})
                            same = response.json().get("results") == single[q]
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        errors.append(response.text)
                    elif not same:
                        mismatches.append(q)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        wall = time.perf_counter() - started
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and mismatches == [] and len(latencies) == CLIENTS * QUERIES_EACH
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    print(f"\nload: {CLIENTS} clients x {QUERIES_EACH} requests, {len(latencies) / wall:.0f} requests/s, "
          f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, 0 errors, every answer equal to the single-client one")


@pytest.mark.slow
def test_keep_alive_requests_are_not_held_back_by_nagle(region_service):
    """The listening socket says it is TCP, so asyncio sets TCP_NODELAY on each connection: a
    keep-alive client does not wait 40 ms (delayed ACK) for each response (it did, before)."""
    service = region_service[0]
    with live_server(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.get("/api/health")
        took = []
        for _ in range(10):
            started = time.perf_counter()
            assert client.get("/api/health").status_code == 200
            took.append(time.perf_counter() - started)
    assert np.median(took) < 0.025, took


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_the_page_in_headless_chromium(region_service, tmp_path):
    """Type a query: the grid shows retrieve.py's top results, thumbnails load, the top result's
    matched regions are drawn as boxes and the parts as bars."""
    pytest.importorskip("websocket")
    service, index, captions = region_service
    query = captions[12]
    expected = retrieve(["text", "--index", str(index), "--query", query, "--top", "10", "--rerank_k", "100",
                         "--device", "cpu"])[0]
    with live_server(service) as url:
        shown = check_page(url, query, str(tmp_path / "page.png"))
    assert not shown["error"], shown["status"]
    assert shown["ids"] == [row for row, _ in expected]
    assert shown["thumbnails"] == 10 and shown["boxes"] == 3 and shown["bars"] == 16   # d = 16: 16 groups
    assert shown["words"] == len(query.split()) + 2          # [CLS] words [SEP] (the demo's words are whole)
    assert os.path.getsize(tmp_path / "page.png") > 10_000
