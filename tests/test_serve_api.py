"""tools/serve.py's JSON API on the demo-format region index (FastAPI's TestClient): the same answers
as tools/retrieve.py, the head's explanation, the index's own files only, and one-line JSON errors."""

import json
import os
import shutil
import threading

import numpy as np
import pytest

from conftest import error_line, run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def retrieve(argv):
    from tools.retrieve import main
    return main(argv)


def build_index(checkpoint, regions, out, *extra):
    assert run_cli(retrieve, ["index", "--checkpoint", str(checkpoint), "--regions", regions, "--out", str(out),
                              "--device", "cpu", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def served(short_region_checkpoint, region_data, tmp_path_factory):
    """(client, service, index folder, captions) of a region index with image paths and boxes."""
    from serving.app import create_app
    from serving.service import Service
    import torch
    folder = tmp_path_factory.mktemp("serve")
    index = build_index(short_region_checkpoint, f"{region_data[0]}/f30k_precomp/test_ims.npy", folder / "t.index")
    captions = open(f"{region_data[0]}/f30k_precomp/test_caps.txt", encoding="utf-8").read().splitlines()
    caption_file = folder / "caps.txt"
    caption_file.write_text("\n".join(captions) + "\n")
    service = Service(str(index), captions=str(caption_file), device=torch.device("cpu"))
    return TestClient(create_app(service)), service, index, captions


def test_the_index_records_paths_and_boxes_from_the_region_record(served, region_data):
    client, _, index, _ = served
    meta = json.loads((index / "index.json").read_text())
    assert meta["version"] == 4 and meta["paths"] and meta["boxes"]
    record = json.load(open(f"{region_data[0]}/f30k_precomp/test_ims.json", encoding="utf-8"))
    assert (index / "paths.txt").read_text().splitlines() == [image["path"] for image in record["images"]]
    assert np.array_equal(np.load(index / "boxes.npy"), np.load(f"{region_data[0]}/f30k_precomp/test_ims_boxes.npy"))
    health = client.get("/api/health").json()
    assert health["count"] == 10 and health["boxes"] and health["images"] and health["format_version"] == 4
    assert len(health["checkpoint"]["sha256"]) == 64 and health["captions"]["count"] == 50


@pytest.mark.parametrize("query", [0, 7, 31])
def test_search_answers_as_retrieve_text(served, query):
    client, _, index, captions = served
    expected = retrieve(["text", "--index", str(index), "--query", captions[query], "--top", "5", "--rerank_k", "6",
                         "--device", "cpu"])[0]
    answer = client.get("/api/search", params={"q": captions[query], "k": 5, "rerank_k": 6}).json()
    assert [(r["id"], r["score"]) for r in answer["results"]] == expected
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5]
    assert all(1 <= r["first_stage_rank"] <= 6 for r in answer["results"])
    assert answer["rerank_k"] == 6 and set(answer["timing_ms"]) == {"encode", "first_stage", "rerank"}


def test_explain_gives_the_re_ranked_score_its_parts_and_the_boxes(served):
    client, _, _, captions = served
    top = client.get("/api/search", params={"q": captions[12], "k": 3}).json()
    for result in top["results"]:
        answer = client.get("/api/explain", params={"q": captions[12], "id": result["id"],
                                                    "gen": top["generation"]}).json()
        assert answer["score"] == pytest.approx(result["score"], abs=1e-5)
        assert sum(part["value"] for part in answer["parts"]) == pytest.approx(answer["score"], abs=1e-5)
        assert answer["part_kind"] == "dimension group" and answer["head"] == "XDimHead"
        assert answer["words"][0]["token"] == "[CLS]" and len(answer["words"][0]["top"]) == 3
        assert len(answer["boxes"]) == 8 and all(len(box) == 4 for box in answer["boxes"])
        assert answer["image_size"] == [320, 240] and len(answer["regions"]) == 3


def test_captions_for_an_image_answer_as_retrieve_image(served, tmp_path):
    client, service, index, _ = served
    expected = retrieve(["image", "--index", str(index), "--captions", service.caption_file, "--item", "2", "--top",
                         "4", "--device", "cpu"])
    answer = client.get("/api/captions", params={"id": 2, "k": 4}).json()
    assert [(r["line"] - 1, r["score"]) for r in answer["results"]] == expected


def test_thumbnails_are_made_once_and_full_images_are_the_index_files(served):
    client, service, _, _ = served
    first = client.get("/api/image/3")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    made = sorted(os.listdir(service.thumbnails))
    stamp = os.stat(os.path.join(service.thumbnails, made[0])).st_mtime_ns
    assert client.get("/api/image/3").content == first.content
    assert sorted(os.listdir(service.thumbnails)) == made
    assert os.stat(os.path.join(service.thumbnails, made[0])).st_mtime_ns == stamp
    full = client.get("/api/image/3", params={"size": "full"})
    assert full.headers["content-type"] == "image/png" and full.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("path, params, status, message", [
    ("/api/search", {"q": ""}, 400, "q must be a caption (got an empty one)"),
    ("/api/search", {"q": "a" * 1001}, 400, "q has 1001 characters; at most 1000 are accepted"),
    ("/api/search", {"q": "a dog", "k": 0}, 400, "k must be between 1 and 100 (got 0)"),
    ("/api/search", {"q": "a dog", "k": 101}, 400, "k must be between 1 and 100 (got 101)"),
    ("/api/search", {"q": "a dog", "rerank_k": 10 ** 6}, 400, "rerank_k must be between 1 and 2000 (got 1000000)"),
    ("/api/search", {"q": "a dog", "k": "ten"}, 400, "k: Input should be a valid integer, unable to parse string "
                                                     "as an integer"),
    ("/api/search", {}, 400, "q: Field required"),
    ("/api/explain", {"q": "a dog", "id": 10}, 404, "id 10: the index has items 0..9"),
    ("/api/explain", {"q": "a dog", "id": -1}, 404, "id -1: the index has items 0..9"),
    ("/api/explain", {"q": "a dog", "id": 1, "gen": "old"}, 409, None),
    ("/api/image/99", {}, 404, "id 99: the index has items 0..9"),
    ("/api/image/1", {"size": "../../etc/passwd"}, 400, "size must be thumb or full (got '../../etc/passwd')"),
    ("/api/image/..%2f..%2fetc%2fpasswd", {}, 404, None),
    ("/api/image/%2Fetc%2Fpasswd", {}, 404, None),
    ("/api/image/abc", {}, 400, "id: Input should be a valid integer, unable to parse string as an integer"),
    ("/api/image/1/../../../etc/passwd", {}, 404, "no such page or API route (see /api/health)"),
    ("/etc/passwd", {}, 404, "no such page or API route (see /api/health)"),
    ("/api/captions", {"id": 0, "k": 1000}, 400, "k must be between 1 and 100 (got 1000)"),
])
def test_bad_requests_are_json_errors(served, path, params, status, message):
    client = served[0]
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]
    if message:
        assert response.json()["error"] == message


def test_bodies_and_other_methods_are_refused(served):
    client = served[0]
    assert client.post("/api/search", content=b"x" * 10).status_code == 405
    response = client.request("GET", "/api/search", params={"q": "a"}, content=b"x" * (17 * 1024))
    assert response.status_code == 413 and "request body over 16384 bytes" in response.json()["error"]


def test_only_the_collection_files_are_served(served, tmp_path):
    """A path leading outside the collection (a link, '..') is refused; nothing a client gives is opened."""
    from serving.app import create_app
    from serving.service import Service
    import torch
    _, _, index, _ = served
    copy = tmp_path / "copy.index"
    shutil.copytree(index, copy)
    paths = (copy / "paths.txt").read_text().splitlines()
    folder = os.path.dirname(paths[0])
    outside = tmp_path / "secret.png"
    shutil.copy(paths[0], outside)
    link = os.path.join(folder, "link-out.png")
    if not os.path.lexists(link):
        os.symlink(outside, link)
    linked_folder = tmp_path / "linked"                 # a link to the collection's own folder: refused too
    os.symlink(folder, linked_folder)
    stray = tmp_path / "elsewhere" / "stray.png"        # a stray recorded path widens nothing
    stray.parent.mkdir()
    shutil.copy(paths[4], stray)
    paths[0], paths[1] = link, os.path.join(folder, "..", os.path.basename(folder), os.path.basename(paths[1]))
    paths[3], paths[5] = str(linked_folder / os.path.basename(paths[3])), str(stray)
    paths[6] = "/"
    (copy / "paths.txt").write_text("\n".join(paths) + "\n")
    client = TestClient(create_app(Service(str(copy), device=torch.device("cpu"), thumbnails=str(tmp_path / "t"))))
    assert client.get("/api/image/0").status_code == 403
    assert client.get("/api/image/0?size=full").json()["error"] == (
        f"id 0: its recorded path {link} goes through a link (to {outside}); only files at their own recorded path "
        "are served; refused")
    assert client.get("/api/image/3?size=full").status_code == 403
    assert client.get("/api/image/5?size=full").status_code == 200      # a real file at its own path
    assert client.get("/api/image/6?size=full").status_code == 403      # "/" is not an image file by its name
    assert client.get("/api/image/1").json()["error"] == ("id 1: the index records a path that is not absolute and "
                                                          "normal; refused")
    assert client.get("/api/image/2").status_code == 200
    os.remove(link)


def test_a_version_3_index_is_served_without_images_or_boxes(served, tmp_path):
    from serving.app import create_app
    from serving.service import Service
    import torch
    _, _, index, captions = served
    old = tmp_path / "v3.index"
    shutil.copytree(index, old)
    meta = json.loads((old / "index.json").read_text())
    for key in ("paths", "boxes"):
        meta.pop(key)
        os.remove(old / f"{key}.txt" if key == "paths" else old / "boxes.npy")
    (old / "index.json").write_text(json.dumps({**meta, "version": 3}))
    client = TestClient(create_app(Service(str(old), device=torch.device("cpu"))))
    health = client.get("/api/health").json()
    assert health["format_version"] == 3 and not health["boxes"] and not health["images"]
    answer = client.get("/api/explain", params={"q": captions[0], "id": 0}).json()
    assert answer["boxes"] is None and "no region boxes" in answer["note"] and answer["regions"]
    assert client.get("/api/image/0").json()["error"].startswith(f"index {old} records no image files")


def test_an_index_replaced_while_serving_is_reloaded_whole_or_refused(short_region_checkpoint, region_data, tmp_path):
    from serving.app import create_app
    from serving.service import Service
    import torch
    regions = f"{region_data[0]}/f30k_precomp/test_ims.npy"
    index = build_index(short_region_checkpoint, regions, tmp_path / "r.index")
    client = TestClient(create_app(Service(str(index), device=torch.device("cpu"))))
    running = client.get("/api/health").json()["checkpoint"]["sha256"][:12]
    before = client.get("/api/search", params={"q": "a red dog", "k": 3}).json()
    build_index(short_region_checkpoint, regions, index, "--overwrite", "--dtype", "fp32")   # same model, rebuilt
    after = client.get("/api/search", params={"q": "a red dog", "k": 3}).json()
    assert after["generation"] != before["generation"]
    assert [r["id"] for r in after["results"]] == [r["id"] for r in before["results"]]
    stale = client.get("/api/explain", params={"q": "a red dog", "id": 0, "gen": before["generation"]})
    assert stale.status_code == 409 and stale.json()["error"].endswith("search again")
    other = tmp_path / "other.index"                  # an index of another checkpoint put in its place
    shutil.copytree(index, other)
    meta = json.loads((other / "index.json").read_text())
    meta["provenance"]["checkpoints"][0]["sha256"] = "f" * 64
    (other / "index.json").write_text(json.dumps(meta))
    shutil.rmtree(index)
    gone = client.get("/api/search", params={"q": "a red dog"})
    assert gone.status_code == 503 and "is not there any more" in gone.json()["error"]
    os.rename(other, index)
    message = (f"index {index} was replaced on disk by one made with another checkpoint (sha256 ffffffffffff; "
               f"this server runs {running}); restart tools/serve.py to serve it")
    for path in ("/api/search?q=a+dog", "/api/image/0", "/api/explain?q=a&id=0"):
        refused = client.get(path)
        assert refused.status_code == 409 and refused.json()["error"] == message
    health = client.get("/api/health")              # the server is up: a probe tells it from a dead one
    assert health.status_code == 200 and health.json()["status"] == "refused" and health.json()["message"] == message
    shutil.rmtree(index)                            # the original checkpoint's index rebuilt: served again
    build_index(short_region_checkpoint, regions, index)
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/search", params={"q": "a red dog", "k": 3}).json()["results"] == before["results"]


def test_concurrent_queries_do_not_disturb_one_another(served):
    """The model is used under one lock: answers from 4 threads equal the single-thread ones."""
    _, service, _, captions = served
    queries = captions[:8]
    single = {q: service.search(q, 5, 6)["results"] for q in queries}
    explained = {q: service.explain(q, 0)["parts"] for q in queries}
    failures = []

    def client(offset):
        for step in range(10):
            q = queries[(offset + step) % len(queries)]
            if service.search(q, 5, 6)["results"] != single[q] or service.explain(q, 0)["parts"] != explained[q]:
                failures.append(q)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == [] and not any(thread.is_alive() for thread in threads)


def test_the_command_line_refuses_in_one_line(served, tmp_path, capsys):
    from tools.serve import main
    import socket
    _, _, index, _ = served
    assert error_line(main, ["--index", str(tmp_path / "none.index")], capsys) == (
        f"--index {tmp_path / 'none.index'} does not exist (an index is the folder tools/retrieve.py index wrote)")
    (tmp_path / "empty").mkdir()
    assert error_line(main, ["--index", str(tmp_path / "empty")], capsys) == (
        f"--index {tmp_path / 'empty'} is not an index folder (no index.json; it is empty)")
    assert error_line(main, ["--index", str(index / "index.json")], capsys).startswith(
        f"--index {index / 'index.json'} is a file, not an index folder")
    assert error_line(main, ["--index", str(index), "--checkpoint", "nope.pth"], capsys) == (
        "--checkpoint nope.pth does not exist")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        assert error_line(main, ["--index", str(index), "--port", str(port)], capsys) == (
            f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); another server there? "
            "choose another --port")
        assert error_line(main, ["--index", str(index), "--port", str(port), "--captions", "none.txt"], capsys) == (
            "--captions none.txt does not exist")          # the inputs first, then the port
    finally:
        taken.close()
    assert error_line(main, ["--index", str(index), "--thumbnails", str(index / "t")], capsys).startswith(
        f"--thumbnails {index / 't'} lies inside --index")


def test_an_esl_clip_index_of_image_files(short_clip_checkpoint, image_data, tmp_path):
    """A CLIP model's index records the files it read: thumbnails of them, the same answers as
    retrieve.py text, and the score explained by ESL level (no regions)."""
    import torch
    from serving.app import create_app
    from serving.service import Service
    _, images, captions = image_data
    index = tmp_path / "clip.index"
    assert run_cli(retrieve, ["index", "--checkpoint", str(short_clip_checkpoint), "--images", images, "--out",
                              str(index), "--device", "cpu"]) == 0
    assert (index / "paths.txt").read_text().splitlines()[0] == os.path.join(images, sorted(os.listdir(images))[0])
    client = TestClient(create_app(Service(str(index), device=torch.device("cpu"))))
    expected = retrieve(["text", "--index", str(index), "--query", captions[3], "--top", "4", "--device", "cpu"])[0]
    answer = client.get("/api/search", params={"q": captions[3], "k": 4}).json()
    assert [(r["id"], r["score"]) for r in answer["results"]] == expected
    assert [r["first_stage_rank"] for r in answer["results"]] == [1, 2, 3, 4]     # ESL-CLIP's first stage is exact
    explained = client.get("/api/explain", params={"q": captions[3], "id": expected[0][0]}).json()
    assert explained["score"] == pytest.approx(expected[0][1], abs=1e-5) and explained["part_kind"] == "level"
    assert explained["words"] is None and explained["boxes"] is None and "no regions" in explained["note"]
    assert sum(part["value"] for part in explained["parts"]) == pytest.approx(explained["score"], abs=1e-5)
    thumbnail = client.get(f"/api/image/{expected[0][0]}")
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\xff\xd8")
    assert client.get("/api/health").json()["boxes"] is False


def test_another_host_is_said_out_loud(served, monkeypatch, capsys):
    """--host other than loopback: a warning on stderr (bound here to loopback: tests listen on 127.0.0.1 only)."""
    import uvicorn
    import tools.serve as serve
    loopback = serve.bind
    started = []
    monkeypatch.setattr(serve, "bind", lambda host, port: loopback("127.0.0.1", 0))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append(sockets[0].close()))
    assert run_cli(serve.main, ["--index", str(served[2]), "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert started and "warning: --host 0.0.0.0: the page and API are reachable from other machines" in err
    assert serve.address("0.0.0.0", 8000) == "http://127.0.0.1:8000/"     # an address a browser here can open
    assert serve.address("::", 8000) == "http://[::1]:8000/" and serve.address("10.0.0.2", 80) == "http://10.0.0.2:80/"
    assert run_cli(serve.main, ["--index", str(served[2])]) == 0 and "warning" not in capsys.readouterr().err
    assert serve.resolve_host("localhost") in ("127.0.0.1", "::1")      # a name is resolved, loopback: no warning
    assert run_cli(serve.main, ["--index", str(served[2]), "--host", "localhost"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_demo_region_record_follows_the_extractor_contract(region_data):
    from PIL import Image
    folder = f"{region_data[0]}/f30k_precomp"
    record = json.load(open(f"{folder}/test_ims.json", encoding="utf-8"))
    boxes, features = np.load(f"{folder}/test_ims_boxes.npy"), np.load(f"{folder}/test_ims.npy")
    assert record["format"] == "dimmatch-regions" and record["version"] == 1 and record["regions"] == 8
    assert len(record["images"]) == len(features) == len(boxes) and boxes.shape[1:] == (8, 4)
    for image, image_boxes in zip(record["images"], boxes):
        assert os.path.isabs(image["path"]) and Image.open(image["path"]).size == (image["width"], image["height"])
        assert (image_boxes[:, 2] > image_boxes[:, 0]).all() and (image_boxes[:, 3] > image_boxes[:, 1]).all()
        assert (image_boxes[:, 2] <= image["width"]).all() and (image_boxes[:, 3] <= image["height"]).all()
        assert [0, 0, image["width"], image["height"]] in image_boxes.tolist()      # the scene region
    assert not os.path.exists(f"{folder}/train_ims.json")          # the test split only


def test_a_region_record_that_does_not_match_its_features_is_one_line(short_region_checkpoint, region_data, tmp_path,
                                                                       capsys):
    folder = tmp_path / "feats"
    shutil.copytree(f"{region_data[0]}/f30k_precomp", folder, ignore=shutil.ignore_patterns("*_images"))
    record = json.loads((folder / "test_ims.json").read_text())
    argv = ["index", "--checkpoint", str(short_region_checkpoint), "--regions", str(folder / "test_ims.npy"), "--out",
            str(tmp_path / "x.index"), "--device", "cpu"]
    (folder / "test_ims.json").write_text(json.dumps({**record, "images": record["images"][:9]}))
    assert error_line(retrieve, argv, capsys) == (
        f"{folder / 'test_ims.json'} lists 9 images and {folder / 'test_ims_boxes.npy'} has shape (10, 8, 4) for the 10 "
        f"rows of 8 regions of {folder / 'test_ims.npy'}; they must match row for row (N x regions x 4)")
    (folder / "test_ims.json").write_text(json.dumps(record))
    np.save(folder / "test_ims_boxes.npy", np.zeros((10, 7, 4), np.float32))
    assert "has shape (10, 7, 4) for the 10 rows of 8 regions" in error_line(retrieve, argv, capsys)
    (folder / "test_ims.json").write_text(json.dumps({**record, "version": 2}))
    assert error_line(retrieve, argv, capsys) == (
        f"{folder / 'test_ims.json'} is not a region record this code reads (format and version ('dimmatch-regions', "
        "2); expected dimmatch-regions version 1)")
    os.remove(folder / "test_ims_boxes.npy")                     # no pair beside the features: no boxes, no paths
    assert run_cli(retrieve, argv) == 0
    assert json.loads((tmp_path / "x.index" / "index.json").read_text())["boxes"] is False


def test_an_unexpected_failure_is_still_a_json_line(served, monkeypatch):
    client, service, _, _ = served
    monkeypatch.setattr(service, "health", lambda: 1 / 0)
    response = TestClient(client.app, raise_server_exceptions=False).get("/api/health")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (ZeroDivisionError: division by zero); see the server's log"}


def test_head_trailing_slashes_and_unknown_parameters(served):
    """HEAD answers as GET without a body; /api/search/ is a JSON 404, not an empty 307; a parameter a
    route does not take is a 400 naming it, not silently ignored."""
    client = served[0]
    for path in ("/", "/api/health", "/api/image/3", "/api/search?q=a+dog"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", path
    slash = client.get("/api/search/", params={"q": "a dog"}, follow_redirects=False)
    assert slash.status_code == 404 and slash.json() == {"error": "no such page or API route (see /api/health)"}
    unknown = client.get("/api/search", params={"q": "a dog", "kk": 5})
    assert unknown.status_code == 400 and unknown.json() == {
        "error": "kk: not a parameter of /api/search (it takes k, q, rerank_k)"}
    assert client.get("/api/image/1", params={"gen": "x", "sise": "full"}).json()["error"].startswith("sise: not a")
    assert client.get("/api/health", params={"x": 1}).status_code == 400


def test_narrowed_k_and_rerank_k_are_echoed_with_a_note(served):
    client = served[0]
    narrowed = client.get("/api/search", params={"q": "a dog", "k": 10, "rerank_k": 5}).json()
    assert narrowed["k"] == 5 and narrowed["rerank_k"] == 5 and len(narrowed["results"]) == 5
    assert narrowed["note"] == "k 10 is more than the 5 images re-ranked: 5 results"
    wide = client.get("/api/search", params={"q": "a dog", "k": 3, "rerank_k": 2000}).json()
    assert wide["rerank_k"] == 10 and wide["k"] == 3 and len(wide["results"]) == 3
    assert wide["note"] == "rerank_k 2000 is more than the index's 10 images: all were re-ranked"
    assert "note" not in client.get("/api/search", params={"q": "a dog", "k": 3, "rerank_k": 5}).json()


def test_full_size_files_are_decoded_and_sent_as_what_they_are(served, tmp_path):
    """A .png that holds a JPEG is image/jpeg; a file named like an image that is not one is a 422."""
    from PIL import Image
    from serving.app import create_app
    from serving.service import Service
    import torch
    _, _, index, _ = served
    copy = tmp_path / "copy.index"
    shutil.copytree(index, copy)
    paths = (copy / "paths.txt").read_text().splitlines()
    jpeg, text = tmp_path / "really-a-jpeg.png", tmp_path / "notes.png"
    Image.open(paths[0]).convert("RGB").save(jpeg, "JPEG")
    text.write_text("not an image")
    paths[0], paths[1] = str(jpeg), str(text)
    (copy / "paths.txt").write_text("\n".join(paths) + "\n")
    client = TestClient(create_app(Service(str(copy), device=torch.device("cpu"), thumbnails=str(tmp_path / "t"))))
    full = client.get("/api/image/0", params={"size": "full"})
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    refused = client.get("/api/image/1", params={"size": "full"})
    assert refused.status_code == 422 and refused.json()["error"].startswith(f"id 1: {text} cannot be read as an image")


def test_a_damaged_cached_thumbnail_is_made_again(served):
    client, service, _, _ = served
    first = client.get("/api/image/4").content
    cached = [name for name in os.listdir(service.thumbnails)
              if open(os.path.join(service.thumbnails, name), "rb").read() == first]
    assert len(cached) == 1
    with open(os.path.join(service.thumbnails, cached[0]), "wb") as damaged:
        damaged.write(first[:100])
    again = client.get("/api/image/4")
    assert again.status_code == 200 and again.content == first


def test_index_refuses_regions_and_images_together(short_region_checkpoint, region_data, tmp_path, capsys):
    """--images beside --regions was silently ignored: one line, exit 2, nothing written."""
    from tools.retrieve import main
    out = tmp_path / "both.index"
    assert error_line(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                             f"{region_data[0]}/f30k_precomp/test_ims.npy", "--images", str(tmp_path), "--out",
                             str(out), "--device", "cpu"], capsys).startswith(
        "--regions and --images cannot be given together")
    assert not out.exists()


def test_the_page_does_not_cut_a_long_query_and_the_helper_has_usage(served):
    """A 1,001-character caption reaches the server, whose 400 the page shows (no silent maxlength);
    tests/serve_helpers.py --help (named in the README) prints its usage."""
    import subprocess
    import sys
    page = served[0].get("/").text
    assert 'id="q"' in page and "maxlength" not in page.split('id="q"')[1].split(">")[0]
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_helpers.py")
    shown = subprocess.run([sys.executable, helper, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "usage:" in shown.stdout and "url query out" in shown.stdout
