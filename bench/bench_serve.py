"""What HTTP adds to a query: tools/serve.py's /api/search against the same query through
tools/retrieve.py's functions in the same process, on synthetic X-Dim indexes.

    python bench/bench_serve.py --sizes 10000 100000

The indexes are those of `bench/bench_retrieval.py scale` (36 regions x d = 1024 per image in fp16,
1024-d global vectors, exact flat FAISS index; a BERT-base text tower with random weights). For each
size, one process serves the index with uvicorn on 127.0.0.1 (one worker, as tools/serve.py does)
and a single client sends the queries one after another; every query is also answered in process
by `query_vectors` + `rank_text` (what `retrieve.py text` runs once its model is loaded; in a worker
thread, as the server runs a request, since torch measured slower from the main thread here), the two
interleaved so that both see the same machine: each query is first run once untimed (its rows of the
mapped features are then in the page cache for both), then timed both ways, in alternating order. The
HTTP answer is checked to equal the in-process one. Latency p50 / p95 over the queries after the
first one, side by side, and HTTP's own time per request: the client's latency less the time the
request spent in the service's search (what the framework, the thread hand-off, JSON and the
loopback socket add, without the model's time, which a shared machine makes noisy).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")     # before transformers and huggingface_hub read it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_retrieval import (build_synthetic_index, folder_bytes, load_bert_tokenizer, queries,  # noqa: E402
                             tiny_vocab_bert, xdim_config, xdim_model)
from pairs import pair_of  # noqa: E402
from retrieval.collection import CollectionIndex  # noqa: E402
from retrieval.commands import query_vectors, rank_text  # noqa: E402
from serve_helpers import live_server  # noqa: E402
from serving.service import Service  # noqa: E402


def measure(index: str, bert: str, count: int, top: int, rerank_k: int) -> dict:
    # httpx is optional (requirements-extra.txt), as are the uvicorn and FastAPI the live server imports
    import httpx
    cpu = torch.device("cpu")
    model, cfg = xdim_model(bert), xdim_config(bert)
    encoder = pair_of(cfg).caption_encoder(cfg, load_bert_tokenizer(bert), 512)
    direct_index = CollectionIndex(index)
    service = Service(index, device=cpu, models=(model, encoder, None),
                      thumbnails=tempfile.mkdtemp(prefix="bench_serve_thumbs_"))
    in_process, over_http, in_handler = [], [], []
    search = service.search

    def timed_search(*args, **kwargs):        # the time the request spends in the service, inside HTTP
        started = time.perf_counter()
        try:
            return search(*args, **kwargs)
        finally:
            in_handler.append(time.perf_counter() - started)
    service.search = timed_search

    def retrieve_text(text):
        items, vectors = query_vectors(model, encoder, None, [text], cpu, 1)
        return rank_text(direct_index, model, items, vectors, top, rerank_k, cpu, 128)[0][0]

    # in a worker thread, as the server runs its requests: torch's matrix products measured 20-30%
    # slower from the main thread than from another one on these 2 cores, which would flatter HTTP
    worker = ThreadPoolExecutor(1)

    def direct(text):
        return worker.submit(retrieve_text, text).result()

    def http(text):
        response = client.get("/api/search", params={"q": text, "k": top, "rerank_k": rerank_k})
        assert response.status_code == 200, response.text
        return [(r["id"], r["score"]) for r in response.json()["results"]]

    with live_server(service) as url, httpx.Client(base_url=url, timeout=120) as client:
        for number, text in enumerate(queries(count + 1)):
            expected = direct(text)          # untimed: both timed runs then find the query's rows in the page cache
            in_handler.clear()
            for way in ((direct, in_process), (http, over_http))[::1 if number % 2 else -1]:   # alternate the order
                started = time.perf_counter()
                answer = way[0](text)
                way[1].append(time.perf_counter() - started)
                assert answer == expected, (text, answer, expected)
            over_http[-1] = (over_http[-1], in_handler[-1])
    worker.shutdown()
    shutil.rmtree(service.thumbnails, ignore_errors=True)

    def summary(values):
        steady = np.array(values[1:]) * 1000
        return {"p50_ms": float(np.percentile(steady, 50)), "p95_ms": float(np.percentile(steady, 95)),
                "first_ms": values[0] * 1000}
    overhead = [(total - inside) * 1000 for total, inside in over_http[1:]]
    over_http = [total for total, _ in over_http]
    return {"in_process": summary(in_process), "http": summary(over_http), "queries": count,
            "added_p50_ms": float(np.percentile(over_http[1:], 50) * 1000 - np.percentile(in_process[1:], 50) * 1000),
            "http_overhead_ms": {"p50": float(np.percentile(overhead, 50)), "p95": float(np.percentile(overhead, 95))}}


def table(rows: list[dict]) -> str:
    lines = ["| images | disk | in process (retrieve.py) p50 / p95 | HTTP /api/search p50 / p95 | difference of p50s | "
             "HTTP's own time per request p50 / p95 |", "|---|---|---|---|---|---|"]
    for row in rows:
        a, b, c = row["in_process"], row["http"], row["http_overhead_ms"]
        lines.append(f"| {row['images']:,} | {row['disk_gb']:.2f} GB | {a['p50_ms']:.1f} / {a['p95_ms']:.1f} ms | "
                     f"{b['p50_ms']:.1f} / {b['p95_ms']:.1f} ms | {row['added_p50_ms']:+.1f} ms | "
                     f"{c['p50']:.2f} / {c['p95']:.2f} ms |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--queries", type=int, default=30, help="timed queries per size (after a first one)")
    parser.add_argument("--rerank_k", type=int, default=100)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for the temporary indexes [system temp]")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.queries < 1 or args.rerank_k < 1 or args.top < 1:
        parser.error("sizes, --queries, --rerank_k and --top must be at least 1")
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_serve_", dir=args.work)
    rows = []
    try:
        bert = tiny_vocab_bert(os.path.join(work, "bert"), 768, 12, 12)
        for size in args.sizes:
            folder = os.path.join(work, f"synthetic_{size}.index")
            started = time.perf_counter()
            build_synthetic_index(folder, size)
            row = {"images": size, "build_seconds": round(time.perf_counter() - started, 1),
                   "disk_gb": folder_bytes(folder) / 2**30, "rerank_k": args.rerank_k, "top": args.top,
                   **measure(folder, bert, args.queries, args.top, args.rerank_k)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
