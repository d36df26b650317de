"""Training speed and time left, for the progress lines of train.log."""

import datetime
import time


class Throughput:
    """Pairs per second over the steps since the last restart (validation pauses the clock)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.restart()

    def restart(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.started) / max(1, self.steps)

    def pairs_per_second(self) -> float:
        return self.batch_size / self.seconds_per_step()

    def eta(self, remaining_steps: int) -> str:
        return str(datetime.timedelta(seconds=round(remaining_steps * self.seconds_per_step())))
