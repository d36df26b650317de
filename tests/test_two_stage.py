"""Two-stage retrieval: a global stage shortlists K items per query, the head re-ranks them."""

import json

import numpy as np
import pytest
import torch

from conftest import error_line, run_cli, train_short_region
from cli.commands import evaluate, train
from evaluation.metrics import retrieval_metrics, shortlist_ranks, two_stage_metrics

TEST = (lambda argv: evaluate(argv, "test"))
TESTALL = (lambda argv: evaluate(argv, "testall", coco_testall=True))


@pytest.fixture(scope="module")
def exhaustive(tmp_path_factory, short_region_checkpoint, region_data):
    """The exhaustive scores of the short X-Dim run on the 10-image test split."""
    path = tmp_path_factory.mktemp("exhaustive") / "sims.npy"
    assert run_cli(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0],
                          "--workers", "0", "--save_sims", str(path)]) == 0
    return path


def test_a_shortlist_of_every_item_is_the_exhaustive_evaluation(short_region_checkpoint, region_data, exhaustive):
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0"]
    result = evaluate(base + ["--rerank_k", "50", "--compare_sims", str(exhaustive)])
    report = result["report"]
    expected = retrieval_metrics(np.load(exhaustive))
    assert {key: report[key] for key in ("i2t", "t2i", "rsum")} == expected
    assert report["two_stage"]["pairs_scored"] == report["two_stage"]["exhaustive_pairs"] == 500
    assert all(value == 0 for direction in report["lost"]["split"].values() for value in direction.values())
    folds = TESTALL(base + ["--split", "test", "--rerank_k", "50"])["report"]
    assert folds["full_5k"]["rsum"] == expected["rsum"] and len(folds["folds"]) == 5


def test_a_short_list_costs_fewer_pairs_and_ranks_inside_it(short_region_checkpoint, region_data, exhaustive,
                                                          tmp_path, capsys):
    ranks = tmp_path / "ranks.json"
    result = evaluate(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
                       "--rerank_k", "3", "--save_ranks", str(ranks), "--compare_sims", str(exhaustive)])
    assert "note: --rerank_k 3 is below R@5/R@10: R@k for k > K counts only what the shortlist holds" in \
        capsys.readouterr().out
    cost = result["report"]["two_stage"]
    assert cost["k"] == 3 and cost["pairs_scored"] <= 10 * 3 + 50 * 3 < cost["exhaustive_pairs"]
    saved = json.loads(ranks.read_text())
    sims = np.load(exhaustive)
    for query in saved["i2t"]:            # the top items are the shortlist in the head's order
        assert len(query["top"]) == 3
        assert query["scores"] == sorted(query["scores"], reverse=True)
        assert np.allclose(query["scores"], sims[query["query"], query["top"]], atol=1e-5)
    assert saved["provenance"]["kind"] == "two_stage" and saved["provenance"]["rerank_k"] == 3


def test_the_right_item_outside_the_shortlist_ranks_last():
    """Three images (15 captions); image 0's shortlist holds none of its captions, image 1's holds one
    tied with a negative (the tie counts against), image 2's own caption is first."""
    items = np.array([[7, 12], [6, 14], [10, 3]])
    scores = np.array([[0.9, 0.8], [0.5, 0.5], [0.9, 0.7]], dtype=np.float32)
    positive = items // 5 == np.arange(3)[:, None]
    assert shortlist_ranks(items, scores, positive, outside_rank=10).tolist() == [10, 1, 0]
    caption_items = np.tile(np.array([[0, 1]]), (15, 1))            # every caption shortlists images 0 and 1
    caption_scores = np.tile(np.array([[0.2, 0.1]], dtype=np.float32), (15, 1))
    metrics = two_stage_metrics(items, scores, caption_items, caption_scores)
    assert metrics["i2t"]["r1"] == pytest.approx(100 / 3) and metrics["i2t"]["meanr"] == pytest.approx(14 / 3)
    t2i = shortlist_ranks(caption_items, caption_scores, caption_items == (np.arange(15) // 5)[:, None], 2)
    assert t2i.tolist() == [0] * 5 + [1] * 5 + [2] * 5          # image 2 is outside every shortlist: last


def test_the_approximate_indexes_report_their_recall(short_region_checkpoint, region_data):
    """10 images, 50 captions: HNSW searching 128 candidates finds the exact lists, so it reports 1.0."""
    for kind in ("ivf", "hnsw"):
        cost = evaluate(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
                         "--rerank_k", "4", "--first_stage_index", kind])["report"]["two_stage"]
        assert cost["index"] == kind and 0 < cost["index_recall_vs_exact"] <= 1
        if kind == "hnsw":
            assert cost["index_recall_vs_exact"] == 1.0


def test_the_recall_against_exact_search_is_counted_query_by_query():
    from retrieval.search import recall_against_exact
    found, exact = np.array([[0, 1, 2], [3, 4, 5]]), np.array([[0, 1, 9], [5, 4, 3]])
    assert recall_against_exact([(found, exact)]) == 5 / 6
    assert recall_against_exact([(found[::-1], exact)]) == 0.0          # another query's items are no hits
    assert recall_against_exact([(np.array([[0, -1]]), np.array([[0, -1]])), (found, found)]) == 1.0


@pytest.fixture(scope="module")
def cosine_checkpoint(tmp_path_factory, region_data, tiny_bert):
    return train_short_region(tmp_path_factory.mktemp("cosine") / "run", region_data, tiny_bert, "--sim_head",
                              "cosine", "--max_steps", "3")


def test_another_checkpoint_shortlists(short_region_checkpoint, cosine_checkpoint, region_data):
    report = evaluate(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
                       "--rerank_k", "50", "--shortlist", str(cosine_checkpoint)])["report"]
    assert report["first_stage"].startswith(f"--shortlist {cosine_checkpoint} (dimmatch checkpoint (region_bert + "
                                            "cosine))")


@pytest.mark.parametrize("extra,expected", [
    (["--rerank_k", "0"], "--rerank_k must be at least 1 (got 0)"),
    (["--rerank_k", "-3"], "--rerank_k must be at least 1 (got -3)"),
    (["--shortlist", "x.pth"], "--shortlist belongs to two-stage retrieval: give --rerank_k K too"),
    (["--rerank_k", "5", "--save_sims", "s.npy"], "--rerank_k does not combine with --save_sims (two-stage scores "
                                                  "only the shortlisted pairs, not a full matrix: use --save_ranks)"),
    (["--rerank_k", "5", "--first_stage_index", "lsh"], "argument --first_stage_index: invalid choice: 'lsh' "
                                                        "(choose from 'flat', 'ivf', 'hnsw')"),
    (["--first_stage_index", "hnsw"], "--first_stage_index hnsw belongs to two-stage retrieval: give --rerank_k K "
                                      "too"),
])
def test_two_stage_mistakes_are_one_line(short_region_checkpoint, region_data, capsys, extra, expected):
    assert error_line(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0],
                             "--workers", "0", *extra], capsys) == expected


def test_a_shortlist_model_with_other_captions_is_refused(short_region_checkpoint, image_data, tiny_clip, region_data,
                                                          tmp_path, capsys):
    out = tmp_path / "clip"
    root, images, _ = image_data
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
                           "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "1", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(out)]) == 0
    message = error_line(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0],
                                "--data_name", "f30k_precomp", "--dataset", "f30k", "--image_root", images,
                                "--ann_path", root, "--workers", "0", "--rerank_k", "5", "--shortlist",
                                str(out / "checkpoint_last.pth")], capsys)
    assert message.startswith(f"caption 0 of --shortlist {out / 'checkpoint_last.pth'} (")


def test_compare_sims_must_be_of_the_same_checkpoint(cosine_checkpoint, region_data, exhaustive, capsys):
    message = error_line(TEST, ["--checkpoint", str(cosine_checkpoint), "--data_path", region_data[0], "--workers",
                                "0", "--rerank_k", "5", "--compare_sims", str(exhaustive)], capsys)
    assert message.startswith(f"{exhaustive} was made with another checkpoint than {cosine_checkpoint}")


def test_the_global_loss_at_weight_zero_is_the_released_step(tmp_path, region_data, tiny_bert):
    """--global_loss_weight 0 leaves the training step bit-identical; a positive weight trains the
    pooled features (and so changes the step)."""
    from conftest import REGION_DIM

    def run(name, *extra):
        out = tmp_path / name
        assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                               "--img_dim", str(REGION_DIM), "--embed_size", "16", "--batch_size", "16",
                               "--max_steps", "3", "--workers", "0", "--device", "cpu", "--output_dir", str(out),
                               *extra]) == 0
        return torch.load(out / "checkpoint_last.pth", weights_only=True)["model"]
    plain, zero, weighted = run("plain"), run("zero", "--global_loss_weight", "0"), run("w", "--global_loss_weight",
                                                                                         "0.5")
    assert all(torch.equal(plain[key], zero[key]) for key in plain)
    assert not all(torch.equal(plain[key], weighted[key]) for key in plain)


def test_the_global_loss_is_the_loss_of_the_pooled_cosine(region_data, tiny_bert):
    from conftest import REGION_DIM, make_config
    from modules.common import pooled
    from modules.losses import HingeLoss, full_matrix_loss
    from pairs import build_model
    torch.manual_seed(0)
    cfg = make_config(encoders="region_bert", sim_head="esl_a", embed_size=16, esl_levels=3, img_dim=REGION_DIM,
                      bert_path=tiny_bert)
    model = build_model(cfg).eval()
    images = torch.rand(4, 5, REGION_DIM)
    ids = torch.randint(5, 30, (4, 6))
    lengths = torch.tensor([6, 4, 5, 6])
    criterion = HingeLoss(0.2)
    with torch.no_grad():
        local = model(images, None, ids, lengths, criterion)
        both = model(images, None, ids, lengths, criterion, global_loss_weight=0.25)
        img, _ = model.encode_images(images, None)
        cap, _ = model.encode_captions(ids, lengths)
        glob = full_matrix_loss(criterion, pooled(img, torch.full((4,), 5)) @ pooled(cap, lengths).t())
    assert torch.allclose(both, local + 0.25 * glob, atol=1e-5)


def test_the_sweep_reports_each_k_and_reaches_the_exhaustive_recall(short_region_checkpoint, region_data, exhaustive,
                                                                    tmp_path, capsys):
    from tools.rerank_sweep import main as sweep
    capsys.readouterr()
    rows = sweep(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--k", "2", "5", "50",
                  "--compare_sims", str(exhaustive), "--out", str(tmp_path / "sweep"), "--device", "cpu"])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == ["note: K 2, 5 below a Recall@K cut-off (R@5/R@10): R@k for k > K counts only what the "
                     "shortlist of K holds, so it equals R@K at most, not the exhaustive R@k"]
    assert [row["k"] for row in rows] == [2, 5, 50]
    assert rows[0]["pairs_scored"] < rows[1]["pairs_scored"] < rows[2]["pairs_scored"] == 500
    assert rows[2]["rsum"] == retrieval_metrics(np.load(exhaustive))["rsum"]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["provenance"]["kind"] == "rerank_sweep" and (tmp_path / "sweep" / "rerank_sweep.png").stat().st_size
    sweep(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--k", "10", "50",
           "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert "note: " not in capsys.readouterr().out      # no K below a cut-off: no note
