"""Every number of every program has a range with both ends, declared in the schema: a huge,
negative or infinite value is one line and exit 2, never a traceback, an overflow, a result
computed from nonsense, or thousands of processes."""

import argparse
import importlib
import json
import math

import pytest

from cli.main import evaluate, train
from config import parsers
from config.options import EVAL, TOOLS, all_options
from conftest import error_line

TOOLS_MAINS = ("tools.retrieve", "tools.report", "tools.rerank_sweep", "tools.ensemble", "tools.make_demo_data",
               "demo.__main__")


def test_every_number_in_the_schema_has_both_bounds():
    for option in (*all_options().values(), *EVAL, *TOOLS):
        if option.type in (int, float) and option.flag:
            assert option.low is not None and option.high is not None and math.isfinite(option.high), option.name


class Built(Exception):
    pass


@pytest.mark.parametrize("module", TOOLS_MAINS)
def test_the_tools_take_their_numbers_from_the_schema(module, monkeypatch):
    """A tool's parser declares no number of its own: each is a schema option, with its range."""
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise Built

    monkeypatch.setattr(parsers.Parser, "parse_args", capture)
    with pytest.raises(Built):
        importlib.import_module(module).main([])
    stack = [seen[0]]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.type in (int, float):
                assert action.dest in parser.schema, f"{module}: --{action.dest} is not a schema option"


@pytest.mark.parametrize("argv, expected", [
    (["--workers", str(10**20)], "--workers must be in [0, "),
    (["--seed", str(10**23)], "--seed must be in [0, 2147483647] (got 100000000000000000000000)"),
    (["--seed", "-1"], "--seed must be at least 0 (got -1)"),
    (["--batch_size", str(10**20)], "--batch_size must be in [1, 1048576]"),
    (["--eval_batch_size", str(10**20)], "--eval_batch_size must be in [1, 1048576]"),
    (["--eval_mem_gb", "inf"], "--eval_mem_gb must be a finite number (got inf)"),
    (["--num_epochs", str(10**12)], "--num_epochs must be in [1, 100000]"),
    (["--learning_rate", "1e300"], "--learning_rate must be in (0, 1000000.0]"),
])
def test_train_refuses_numbers_out_of_range(argv, expected, capsys):
    assert error_line(train, argv, capsys).startswith(expected)


@pytest.mark.parametrize("argv, expected", [
    (["--weights", "1e308", "1e308"], "--weights must be in (0, 1000000.0] (got 1e+308)"),
    (["--eval_batch_size", str(10**20)], "--eval_batch_size must be in [1, 1048576]"),
    (["--workers", str(10**20)], "--workers must be in [0, "),
    (["--rerank_k", str(10**12)], "--rerank_k must be in [1, 16777216]"),
])
def test_test_refuses_numbers_out_of_range(argv, expected, capsys):
    assert error_line(evaluate, ["--checkpoint", "x.pth", *argv], capsys).startswith(expected)


@pytest.mark.parametrize("module, argv, expected", [
    ("tools.report", ["--checkpoint", "x", "--out", "r", "--seed", "-1"], "--seed must be at least 0 (got -1)"),
    ("tools.report", ["--checkpoint", "x", "--out", "r", "--workers", str(10**20)], "--workers must be in [0, "),
    ("tools.retrieve", ["text", "--index", "x", "--query", "a", "--top", "0"], "--top must be at least 1 (got 0)"),
    ("tools.retrieve", ["text", "--index", "x", "--query", "a", "--batch_size", str(10**20)],
     "--batch_size must be in [1, 1048576]"),
    ("tools.retrieve", ["image", "--index", "x", "--captions", "c", "--item", "-1"], "--item must be at least 0"),
    ("tools.rerank_sweep", ["--checkpoint", "x", "--out", "o", "--k", "10", "0"], "--k must be at least 1 (got 0)"),
    ("tools.ensemble", ["a.npy", "b.npy", "--weights", "1e308", "1e308"], "--weights must be in (0, 1000000.0]"),
    ("tools.make_demo_data", ["d", "--train_images", str(10**12)], "--train_images must be in [1, 1000000]"),
    ("demo.__main__", ["--epochs", str(10**9)], "--epochs must be in [1, 100000]"),
])
def test_tools_refuse_numbers_out_of_range(module, argv, expected, capsys):
    assert error_line(importlib.import_module(module).main, argv, capsys).startswith(expected)


def test_a_null_recipe_value_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    recipe = tmp_path / "null.json"
    recipe.write_text(json.dumps({"description": "x", "options": {"num_epochs": None}}))
    out = tmp_path / "run"
    assert error_line(train, ["--recipe", str(recipe), "--output_dir", str(out)], capsys) == \
        f"recipe {recipe}: 'num_epochs' is null; give it a value, or leave it out for the default"
    assert not out.exists()
