"""The command-line programs behind train.py, test.py and testall.py."""
