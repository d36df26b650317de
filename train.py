"""Train a dimension-level image-text matching model (see --help)."""

from cli.commands import main_train

if __name__ == "__main__":
    main_train()
