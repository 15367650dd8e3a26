"""Which operators Train.py's training step spends its time in, by paddle.profiler.

    python benchmarks/profile_step.py [--batch 64]     # prints Paddle's operator summary

One warm-up step, then one profiled step of Recipe.train_step (D on fakes, D on reals, 2 G steps)
on random images, with the project's CPU settings (Utils). The summary lists forward operators as
"<op> dygraph" and their backward passes as "Global_<Op>GradNode".
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import Utils  # noqa: E402,F401  sets up the CPU for Paddle, so it comes first

import paddle  # noqa: E402
import paddle.profiler as profiler  # noqa: E402

import Recipe  # noqa: E402
from Net import Discriminator, Generator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="real images per step (default 64)")
    batch = parser.parse_args().batch
    paddle.seed(0)
    G, D = Generator(), Discriminator()
    opt_g = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=G.parameters())
    opt_d = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=D.parameters())
    real = paddle.rand([batch, 3, 96, 96]) * 2 - 1
    players, config = Recipe.Players(G, D, opt_g, opt_d), Recipe.StepConfig(g_steps=2)
    Recipe.train_step(players, real, config)  # warm-up
    # on_trace_ready does nothing: the default would write a Chrome trace into ./profiler_log.
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda prof: None)
    prof.start()
    started = time.perf_counter()
    [float(loss) for loss in Recipe.train_step(players, real, config)]
    seconds = time.perf_counter() - started
    prof.step()
    prof.stop()
    print(f"batch {batch}: {seconds:.2f} s for one training step")
    prof.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")


if __name__ == "__main__":
    main()
