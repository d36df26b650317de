"""tools/retrieve.py: an index of one's own collection answers queries as the evaluation scores."""

import os
import shutil

import numpy as np

from conftest import error_line, run_cli
from cli.commands import evaluate, train


def retrieve(argv):
    from tools.retrieve import main
    return main(argv)


def test_text_and_image_queries_rank_as_the_evaluation_scores(short_region_checkpoint, region_data, tmp_path):
    data = region_data[0]
    sims_path = tmp_path / "sims.npy"
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(short_region_checkpoint), "--data_path", data,
                                                         "--workers", "0", "--save_sims", str(sims_path)]) == 0
    sims = np.load(sims_path)
    index = tmp_path / "test.index"
    regions = f"{data}/f30k_precomp/test_ims.npy"
    assert run_cli(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", regions, "--out",
                              str(index), "--device", "cpu", "--dtype", "fp32"]) == 0
    captions = open(f"{data}/f30k_precomp/test_caps.txt", encoding="utf-8").read().splitlines()
    results = retrieve(["text", "--index", str(index), "--query", captions[7], "--query", captions[31],
                        "--top", "3", "--device", "cpu"])
    for column, best in zip((7, 31), results):
        assert [row for row, _ in best] == list(np.argsort(-sims[:, column], kind="stable")[:3])
        assert np.allclose([score for _, score in best], np.sort(sims[:, column])[::-1][:3], atol=1e-5)
    caption_file = tmp_path / "caps.txt"
    caption_file.write_text("\n".join(captions) + "\n")
    best = retrieve(["image", "--index", str(index), "--captions", str(caption_file), "--item", "2", "--top", "4",
                     "--device", "cpu"])
    assert [row for row, _ in best] == list(np.argsort(-sims[2], kind="stable")[:4])
    exported = tmp_path / "features.npz"
    retrieve(["export", "--index", str(index), "--captions", str(caption_file), "--out", str(exported),
              "--device", "cpu"])
    arrays = np.load(exported)
    assert arrays["image_names"].shape == (10,) and arrays["caption_lengths"].shape == (50,)


def test_wrong_collections_are_one_line_errors(short_region_checkpoint, tmp_path, capsys):
    from cli.guard import run_guarded
    capsys.readouterr()
    assert run_guarded(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--images", str(tmp_path),
                                  "--out", str(tmp_path / "x.index")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {short_region_checkpoint} is a region_bert model (BUTD "
                                               "regions + BERT words): index its collection with --regions, or give "
                                               "--detector with --images to extract their regions first")
    assert run_guarded(retrieve, ["text", "--index", str(tmp_path / "none.index"), "--query", "a dog"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: index {tmp_path / 'none.index'} does not exist (an index is "
                                               "the folder tools/retrieve.py index wrote)")


def test_an_index_that_is_something_else_says_what_it_is(tmp_path, capsys):
    """A model folder, a training run, a file or another folder given as --index: what it is, and
    (for a model) how to build an index with it; only an old one-file index of ours is called one."""
    import torch
    model = tmp_path / "runs" / "xdim" / "model_best"
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (model / name).write_text("{}")
    build = ("build an index of your collection with it: tools/retrieve.py index --checkpoint {} --regions FEATS.npy "
             "(or --images DIR) --out NAME.index, then give --index NAME.index")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("a dog\n")
    (tmp_path / "nothing").mkdir()
    torch.save({"format": "other", "version": 2}, tmp_path / "other.pth")
    for given, expected in [
        (model, f"{model} is a model folder (config.json + model.safetensors), not an index: " + build.format(model)),
        (model.parent, f"{model.parent} is a training run's folder, not an index: " + build.format(model)),
        (tmp_path / "empty", f"{tmp_path / 'empty'} is a file, not an index: an index is a folder written by "
                             "tools/retrieve.py index"),
        (tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'} is a file, not an index: an index is a folder written by "
                                 "tools/retrieve.py index"),
        (tmp_path / "other.pth", f"{tmp_path / 'other.pth'} is a file, not an index: an index is a folder written by "
                                 "tools/retrieve.py index"),
        (tmp_path / "nothing", f"{tmp_path / 'nothing'} is not an index (no index.json; it is empty): an index is the "
                               "folder tools/retrieve.py index wrote"),
    ]:
        assert error_line(retrieve, ["text", "--index", str(given), "--query", "a"], capsys) == expected


def test_a_folder_of_images_for_a_clip_model(tmp_path, image_data, tiny_clip):
    root, images, captions = image_data
    out = tmp_path / "clip"
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
                           "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "1", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(out)]) == 0
    index = tmp_path / "images.index"
    retrieve(["index", "--checkpoint", str(out / "checkpoint_last.pth"), "--images", images, "--out", str(index),
              "--device", "cpu"])
    best = retrieve(["text", "--index", str(index), "--query", captions[0], "--top", "5", "--device", "cpu"])[0]
    scores = [score for _, score in best]
    assert len(best) == 5 and scores == sorted(scores, reverse=True)


def test_a_shortlisted_query_is_exhaustive_scoring_restricted_to_its_shortlist(short_region_checkpoint, region_data,
                                                                              tmp_path):
    """--rerank_k 4 of 10 images: the first stage keeps the 4 images nearest by pooled features, and
    their order and scores are the head's, as exhaustive scoring gives them."""
    import torch
    from modules.common import pooled
    from retrieval.collection import CollectionIndex
    index = tmp_path / "x.index"
    assert run_cli(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                              f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--dtype", "fp32",
                              "--device", "cpu"]) == 0
    query = ["text", "--index", str(index), "--query", "a red dog at the beach", "--device", "cpu", "--top", "10"]
    every = dict(retrieve(query + ["--exhaustive"])[0])
    short = retrieve(query + ["--rerank_k", "4"])[0]
    assert len(short) == 4 and all(abs(score - every[row]) < 1e-5 for row, score in short)
    assert [score for _, score in short] == sorted((score for _, score in short), reverse=True)
    from retrieval.commands import load
    model, _, encoder = load(str(short_region_checkpoint), torch.device("cpu"))
    ids = torch.tensor([encoder("a red dog at the beach")])
    with torch.no_grad():
        words, lengths = model.encode_captions(ids, torch.tensor([ids.shape[1]]))
        vector = pooled(words, lengths).numpy()
    scores = np.load(index / "global.npy") @ vector[0]
    assert {row for row, _ in short} == set(np.argsort(-scores)[:4].tolist())
    assert len(CollectionIndex(str(index))) == 10


def test_overwrite_replaces_only_an_index_and_never_an_input_inside_it(short_region_checkpoint, region_data,
                                                                         tmp_path, capsys):
    from tools.retrieve import main
    features = os.path.join(region_data[0], "f30k_precomp", "test_ims.npy")
    inside = tmp_path / "ck.index"
    inside.mkdir()
    shutil.copyfile(short_region_checkpoint, inside / "m.pth")
    assert error_line(main, ["index", "--checkpoint", str(inside / "m.pth"), "--regions", features, "--out",
                             str(inside), "--overwrite"], capsys) == (
        f"--checkpoint {inside / 'm.pth'} lies inside --out {inside}, which this command writes whole; move it out "
        "first, or write elsewhere")
    notes = tmp_path / "notes.index"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep")
    assert error_line(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", features, "--out",
                             str(notes), "--overwrite"], capsys) == (
        f"--out {notes} is not an index written by this tool; --overwrite replaces only an index folder whole; "
        "write elsewhere")
    assert (inside / "m.pth").exists() and (notes / "notes.txt").read_text() == "keep"
    index = tmp_path / "real.index"
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", features, "--out",
                          str(index)]) == 0
    (index / "mine.txt").write_text("mine")
    assert error_line(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", features, "--out",
                             str(index), "--overwrite"], capsys) == (
        f"--out {index} holds mine.txt, which is not part of an index; --overwrite replaces only an index folder "
        "whole; write elsewhere")
    (index / "mine.txt").unlink()
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", features, "--out",
                          str(index), "--overwrite"]) == 0
    export = tmp_path / "new" / "folder" / "x.npz"
    assert run_cli(main, ["export", "--index", str(index), "--out", str(export)]) == 0 and export.exists()


def test_retrieve_refuses_empty_queries_and_caption_files(short_region_checkpoint, region_data, tmp_path, capsys):
    from tools.retrieve import main
    index = tmp_path / "x.index"
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                          f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device", "cpu"]) == 0
    assert error_line(main, ["text", "--index", str(index), "--query", " "], capsys) == \
        "--query must be a caption (got an empty one)"
    (tmp_path / "empty.txt").write_text("")
    assert error_line(main, ["image", "--index", str(index), "--captions", str(tmp_path / "empty.txt"), "--item",
                             "0"], capsys) == f"--captions {tmp_path / 'empty.txt'} holds no captions (one caption a line)"
    np.save(tmp_path / "X.npy", np.zeros((3, 4), np.float32))      # a binary file is not taken for text
    assert error_line(main, ["image", "--index", str(index), "--captions", str(tmp_path / "X.npy"), "--item", "0"],
                      capsys) == f"{tmp_path / 'X.npy'} is a NumPy array file (.npy), not a text file of captions (one " \
                                 "caption a line)"
    (tmp_path / "feats.bin").write_bytes(b"a dog\n\x00\x01\x02")
    assert error_line(main, ["image", "--index", str(index), "--captions", str(tmp_path / "feats.bin"), "--item",
                             "0"], capsys) == (f"{tmp_path / 'feats.bin'}:2 holds a NUL byte: it is a binary file (or "
                                               "UTF-16 text without its byte-order mark), not a text file of captions "
                                               "(one caption a line)")
