"""Train.py, then each rank saves its own networks' weights to <--output>/rank<N>.npz, so that a
test can check the ranks stayed identical. Run under paddle.distributed.launch by
test_several_processes.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import Utils  # noqa: E402  sets up the CPU for Paddle, so it comes first

import numpy as np  # noqa: E402
import paddle  # noqa: E402

import Train  # noqa: E402

set_up, sessions = Train.set_up, []
Train.set_up = lambda args: sessions.append(set_up(args)) or sessions[-1]


def main():
    args = Train.parse_args(sys.argv[1:])
    Train.train(args)
    networks = {"G": sessions[0].nets.G, "D": sessions[0].nets.D}
    np.savez(Path(args.output) / f"rank{paddle.distributed.get_rank()}.npz",
             **{f"{name}.{key}": value.numpy() for name, network in networks.items()
                for key, value in network.state_dict().items()})


Utils.run_main(main)
