"""COCO testall: 5-fold 1K mean and full 5K Recall@K of a checkpoint; see --help."""

from cli.main import main_testall

if __name__ == "__main__":
    main_testall()
