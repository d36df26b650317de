"""The command lines, built from the option schema: errors are one line (`error: ...`, exit 2)."""

import argparse
import dataclasses

from errors import ConfigError
from .options import EVAL, RUNTIME_OPTIONS, TOOLS, TRAIN, all_options, model_choices, owned_options


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes raise ConfigError (one line naming the option, exit 2) instead of
    printing the usage first; the values of schema options are checked against their ranges."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False, **kwargs)
        self.schema = {}

    def error(self, message: str):
        raise ConfigError(message)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        self.check_values(parsed)
        return parsed

    def check_values(self, parsed) -> None:
        """The schema options of this parser and of the subcommand chosen (argparse parses a
        subcommand with parse_known_args, which does not pass here)."""
        for name, option in self.schema.items():
            option.check(getattr(parsed, name, None))
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                if chosen is not None:
                    chosen.check_values(parsed)


def add_option(parser: Parser, group, option, default=argparse.SUPPRESS, required: bool = False,
               hide: bool = False) -> None:
    """One schema option as a flag of `group` (a group of `parser`, or the parser); with SUPPRESS
    only what the command line gives is set."""
    parser.schema[option.name] = option
    shown = option.help if option.default in (None, False, "") or option.type is bool else \
        f"{option.help} (default: {option.default})"
    kwargs = dict(dest=option.name, default=default, help=argparse.SUPPRESS if hide else shown.replace("%", "%%"))
    if option.type is bool:
        group.add_argument(f"--{option.name}", action="store_true", **kwargs)
        return
    group.add_argument(f"--{option.name}", type=option.type, choices=option.choices, nargs=option.nargs,
                       required=required, **kwargs)


def train_parser() -> Parser:
    """train.py's options: only those the command line gives are set (the rest is resolved)."""
    parser = Parser(description="Train ESL-CLIP, ESL-region or X-Dim (any encoder pair x any similarity head).\n"
                                "Start from a released recipe with --recipe NAME (--list_recipes); every option "
                                "given here overrides it.")
    model = parser.add_argument_group("model")
    for option in model_choices() + TRAIN[:1]:
        add_option(parser, model, option)
    for title, options in owned_options():
        group = parser.add_argument_group(title)
        for option in options:
            if option.flag:
                add_option(parser, group, option)
    training = parser.add_argument_group("training")
    for option in TRAIN[1:]:
        add_option(parser, training, option)
    runtime = parser.add_argument_group("runtime")
    for option in RUNTIME_OPTIONS:
        add_option(parser, runtime, option)
    parser.add_argument("--list_recipes", action="store_true", default=argparse.SUPPRESS,
                        help="list the released recipes and exit")
    parser.add_argument("--print_config", action="store_true", default=argparse.SUPPRESS,
                        help="print the resolved config and exit, touching nothing")
    return parser


EVALUATION_RUNTIME = ("amp", "tf32")


def eval_parser(description: str, default_split: str) -> Parser:
    """test.py / testall.py: the checkpoint's own options, which data and tokenizer options given
    here override (None when not given)."""
    parser = Parser(description=description)
    options = all_options()
    for option in EVAL:
        add_option(parser, parser, option, default=option.default, required=option.name == "checkpoint")
    parser.add_argument("--split", default=default_split, help=f"the split to evaluate (default: {default_split})")
    data = parser.add_argument_group("data and tokenizer (default: the checkpoint's)")
    for option in options.values():
        if option.evaluation:
            add_option(parser, data, option, default=None, hide=option.name == "img_dim")
    runtime = parser.add_argument_group("runtime")
    for option in RUNTIME_OPTIONS + tuple(options[name] for name in EVALUATION_RUNTIME):
        add_option(parser, runtime, option, default=option.default)
    return parser


def data_parser(parser: Parser) -> None:
    """The data options of every encoder pair (tools that evaluate a checkpoint on a split)."""
    group = parser.add_argument_group("data (default: the checkpoint's)")
    for option in all_options().values():
        if option.evaluation:
            add_option(parser, group, option, default=None)


def add_schema_options(parser: Parser, group, names: tuple, required: tuple = (), **changes) -> None:
    """A tool's options, taken by name from the schema (train.py's, test.py's and TOOLS) so that
    they have the same types and ranges; `changes` gives one a tool's own default or help, as
    {name: {"default": ..., "help": ...}}."""
    schema = {**all_options(), **{option.name: option for option in EVAL + TOOLS}}
    for name in names:
        option = dataclasses.replace(schema[name], **changes.get(name, {}))
        add_option(parser, group, option, default=option.default, required=name in required)
