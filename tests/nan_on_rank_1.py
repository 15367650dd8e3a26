"""Train.py with a float16-style overflow on one process only: rank 1's losses of its third step
become NaN. Run under paddle.distributed.launch by test_several_processes.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import Utils  # noqa: E402,F401  sets up the CPU for Paddle, so it comes first

import paddle  # noqa: E402

import Recipe  # noqa: E402
import Train  # noqa: E402

real_step, steps = Recipe.train_step, []


def overflowing_on_rank_1(*args, **kwargs):
    losses = real_step(*args, **kwargs)
    steps.append(1)
    if paddle.distributed.get_rank() == 1 and len(steps) == 3:
        return [loss * float("nan") for loss in losses]
    return losses


Recipe.train_step = overflowing_on_rank_1
Utils.run_main(lambda: Train.main(sys.argv[1:]))
