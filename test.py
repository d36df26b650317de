"""Recall@K of a checkpoint on one split (Flickr30K 1K test by default); see --help."""

from cli.main import main_test

if __name__ == "__main__":
    main_test()
