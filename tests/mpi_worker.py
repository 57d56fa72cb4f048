"""Run under ``mpiexec -n 2`` by tests/test_distributed.py (not collected by pytest).

usage: mpi_worker.py step OUT.npz [--sync-bn]   one data-parallel SGD step, rank 0 saves weights
       mpi_worker.py fail                       rank 1 raises; the job must end, not hang
"""

import sys

import numpy as np

from minunet.errors import MinunetError
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import SGD
from minunet.nn.sync_batchnorm import use_sync_batchnorm
from minunet.train.distributed import make_communicator


def batch():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 16, 16))
    y = rng.integers(0, 3, (4, 16, 16))
    return x, y


def main() -> None:
    comm = make_communicator(True, "mpi", "numpy")
    if sys.argv[1] == "fail":
        if comm.rank == 1:
            raise MinunetError("rank 1 failed on purpose")
        comm.allreduce_sum(np.zeros(3))  # rank 0 would wait here forever
        return
    out, sync = sys.argv[2], "--sync-bn" in sys.argv
    net = UNet(3, 3, base_channels=4, depth=2, dtype=np.float64, seed=comm.rank)  # differ...
    comm.broadcast_model(net)  # ...until here
    if sync:
        use_sync_batchnorm(net, comm.allreduce_sum)
    x, y = batch()
    share = len(x) // comm.size
    lo = comm.rank * share
    loss = SoftmaxCrossEntropy()
    loss.forward(net.forward(x[lo : lo + share]), y[lo : lo + share])
    net.zero_grad()
    net.backward(loss.backward())
    comm.average_gradients(net.parameters())
    SGD(net.parameters(), lr=0.1, momentum=0.0).step()
    if comm.rank == 0:
        np.savez(out, **net.state_dict())


if __name__ == "__main__":
    main()
