"""tools/retrieve.py: an index of one's own collection answers queries as the evaluation scores."""

import numpy as np

from conftest import run_cli
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
    run_cli(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--regions", regions, "--out", str(index),
                       "--device", "cpu"])
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
                                               "regions + BERT words): index its collection with --regions")
    assert run_guarded(retrieve, ["text", "--index", str(tmp_path / "none.index"), "--query", "a dog"]) == 2
    assert capsys.readouterr().err.strip() == f"error: index {tmp_path / 'none.index'} does not exist"


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
