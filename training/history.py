"""OUTPUT_DIR/metrics.jsonl: one JSON line per validation, for scripts to read back (as open_clip's
results.jsonl). A resumed run first cuts the file back to its checkpoint's step, so that a run killed
between a validation and its checkpoint neither loses nor repeats a line."""

import json
import os

from checkpoints.atomic import atomic_write_text

NAME = "metrics.jsonl"


class MetricsHistory:
    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, NAME)

    def append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def cut_after(self, global_step: int) -> None:
        """Keep the lines of validations at or before `global_step` (a torn last line goes too)."""
        if not os.path.isfile(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    break
                if entry["global_step"] <= global_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        atomic_write_text("".join(kept), self.path)

    def read(self) -> list[dict]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
