"""Train a dimension-level image-text matching model (see --help)."""

from cli.main import main_train

if __name__ == "__main__":
    main_train()
