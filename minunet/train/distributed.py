"""Data-parallel training: N processes, one model replica each, one allreduce per step.

    mpiexec -n 4 python -m minunet.train --batch-size 32 ...

Every process (rank) holds the same weights (rank 0's, broadcast at the start) and takes
its own quarter of every global batch of 32. After its backward pass, each rank holds
the gradient of its own shard's loss; averaging those gradients over the ranks gives the
gradient of the whole batch's loss, so after

    grad = allreduce_sum(grad) / N          (one flat buffer, one collective per step)

every rank takes the identical optimiser step and the replicas stay identical, without
ever sending weights again. Rank 0 alone writes files.

The collective engines are the established ones, not ours: MPI through mpi4py (CPU
arrays; CuPy arrays are copied through the host), and NCCL through CuPy for GPUs, with
NCCL's unique id shared over MPI as ChainerMN did.

A rank that raises must not leave the others waiting forever in a collective: an
exception hook calls ``MPI.COMM_WORLD.Abort``, which ends the whole job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module
from minunet.errors import MinunetError
from minunet.nn.base import Layer, Parameter

# Seconds a failing rank waits, its message written, before it aborts the job (see the hook).
ABORT_GRACE_S = 0.5

# Variables the common MPI launchers set in every process they start.
MPI_SIZE_VARIABLES = (
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_NTASKS_PER_JOB_MPI",
)
COMMS = ("nccl", "mpi")


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process as one of several."""
    for name in MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


class Communicator:
    """One process alone: every collective is the identity. The base of the real ones."""

    rank = 0
    size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, array: Any) -> Any:
        """Element-wise sum of ``array`` over all ranks (returns a new array)."""
        return array

    def broadcast(self, array: Any) -> Any:
        """Rank 0's ``array`` on every rank."""
        return array

    # -- built from the two primitives above ---------------------------------------------
    def broadcast_model(self, model: Layer) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if self.size == 1:
            return
        for p in model.parameters():
            p.data[...] = self.broadcast(p.data)
        for name, buf in model.named_buffers():
            owner, _, leaf = name.rpartition(".")
            layer = model._find(owner)
            if np.ndim(buf) == 0:
                layer.buffers[leaf] = self.broadcast(np.asarray(buf).reshape(1)).reshape(())
            else:
                layer.buffers[leaf][...] = self.broadcast(buf)

    def average_gradients(self, params: Sequence[Parameter], extra: Any = None) -> Any:
        """Replace every gradient by its mean over the ranks, in ONE allreduce.

        The gradients are packed into one flat buffer (one collective instead of one per
        parameter: latency is paid once). ``extra``, a small float array, rides along and
        comes back summed over the ranks (the training loop sends its stop flag this way,
        so all ranks stop at the same step). Returns the summed ``extra`` or None.
        """
        if self.size == 1:
            return extra
        xp = get_array_module(params[0].grad)
        parts = [p.grad.reshape(-1) for p in params]
        if extra is not None:
            parts.append(xp.asarray(extra, dtype=params[0].grad.dtype).reshape(-1))
        flat = self.allreduce_sum(xp.concatenate(parts))
        offset = 0
        for p in params:
            n = p.grad.size
            p.grad[...] = (flat[offset : offset + n] / self.size).reshape(p.grad.shape)
            offset += n
        return None if extra is None else flat[offset:]


class MPICommunicator(Communicator):
    """Collectives through mpi4py, on host arrays: CuPy arrays are copied to the host and
    back (with ``--comm nccl`` GPUs talk to each other directly instead)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise MinunetError(
                "distributed training needs mpi4py: pip install 'minunet[mpi]'"
            ) from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    @staticmethod
    def _host(array: Any) -> tuple[np.ndarray, ModuleType]:
        """A contiguous host copy of ``array`` (or ``array`` itself) and its array module."""
        xp = get_array_module(array)
        return (np.ascontiguousarray(array) if xp is np else array.get()), xp

    def allreduce_sum(self, array: Any) -> Any:
        buf, xp = self._host(array)
        out = np.empty_like(buf)
        self.comm.Allreduce(buf, out, op=self.MPI.SUM)
        return out if xp is np else xp.asarray(out)

    def broadcast(self, array: Any) -> Any:
        buf, xp = self._host(array)
        buf = buf.copy()
        self.comm.Bcast(buf, root=0)
        return buf if xp is np else xp.asarray(buf)


class NCCLCommunicator(Communicator):
    """Collectives between GPUs through NCCL (CuPy's binding), set up over MPI."""

    def __init__(self) -> None:
        mpi = MPICommunicator()
        import cupy
        from cupy.cuda import nccl

        self.rank, self.size = mpi.rank, mpi.size
        # One GPU per rank: the rank's index among the GPUs of its node.
        cupy.cuda.Device(self._local_rank() % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.comm.bcast(uid, root=0)  # a small tuple of ints: the one pickle here
        self.nccl = nccl
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.cupy = cupy

    @staticmethod
    def _local_rank() -> int:
        for name in (
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "PMI_LOCAL_RANK",
            "SLURM_LOCALID",
        ):
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        return 0

    def _dtype(self, array: Any) -> int:
        kinds = {
            np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
            np.dtype(np.float64): self.nccl.NCCL_FLOAT64,
            np.dtype(np.int64): self.nccl.NCCL_INT64,
        }
        return kinds[np.dtype(array.dtype)]

    def allreduce_sum(self, array: Any) -> Any:
        array = self.cupy.ascontiguousarray(self.cupy.asarray(array))
        out = self.cupy.empty_like(array)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(
            array.data.ptr, out.data.ptr, array.size, self._dtype(array), self.nccl.NCCL_SUM, stream
        )
        return out

    def broadcast(self, array: Any) -> Any:
        array = self.cupy.ascontiguousarray(self.cupy.asarray(array)).copy()
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.bcast(array.data.ptr, array.size, self._dtype(array), 0, stream)
        return array


def make_communicator(distributed: bool | None, comm: str, backend: str) -> Communicator:
    """The communicator for this process.

    distributed: True forces MPI, False forces one process, None detects an MPI launch.
    comm: ``nccl`` (GPUs; the default for the cupy backend) or ``mpi``.
    """
    if distributed is None:
        distributed = launched_by_mpi()
    if not distributed:
        return Communicator()
    if comm not in COMMS:
        raise MinunetError(f"unknown --comm {comm!r}: choose one of {', '.join(COMMS)}")
    if comm == "nccl" and backend == "cupy":
        communicator: Communicator = NCCLCommunicator()
    else:
        communicator = MPICommunicator()
    install_abort_hook(communicator)
    return communicator


def install_abort_hook(comm: Communicator) -> None:
    """Make an uncaught exception on any rank end the whole job instead of a hang."""
    if comm.size == 1:
        return
    from mpi4py import MPI

    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        rank = MPI.COMM_WORLD.Get_rank()
        if issubclass(kind, MinunetError):
            print(f"error (rank {rank}): {value}", file=sys.stderr, flush=True)
        else:
            previous(kind, value, tb)
        sys.stderr.flush()
        # Abort tears the job down at once, and the launcher may not yet have forwarded
        # what this rank wrote to its pipe: a moment's grace lets the message reach the user.
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
