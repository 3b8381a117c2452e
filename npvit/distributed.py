"""Data parallelism across processes and machines through MPI: ``mpirun -np N python scripts/train.py ...``.

Every process (rank) holds the whole model and optimiser. Each step the global batch, the same
rows on every rank (the order is a function of (seed, epoch)), is split into N shards; rank r
runs forward and backward on shard r with its dlogits weighted by n_r / B, so that one
``Allreduce`` (sum) of the flat gradient buffer gives every rank the gradient of the whole
batch; every rank then takes the same optimiser step and the weights stay identical. This is
the scheme of ChainerMN's multi-node optimizer and of llm.c's multi-process training; on GPUs
the all-reduce would go through NCCL (``cupy.cuda.nccl``, one GPU per rank, its id broadcast
through MPI) behind the same ``allreduce_`` call.

Without an MPI launcher (or with one process) nothing here imports mpi4py and ``get_world()``
is a one-process world whose collectives do nothing.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .errors import UserError

# What MPI launchers put in each process's environment: MPICH/Intel (PMI), Open MPI, PMIx.
LAUNCH_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_size():
    """The number of processes an MPI launcher started, or None outside one."""
    for var in LAUNCH_SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


class SingleProcess:
    """The world of one process: every collective is the identity."""

    rank, size, local_size = 0, 1, 1

    def allreduce_(self, array):
        return array

    def sum(self, values):
        return [float(v) for v in values]

    def any(self, flag):
        return bool(flag)

    def same(self, value):
        return True

    def gather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code):  # pragma: no cover - one process just exits
        raise SystemExit(code)


class MPIWorld:
    """``COMM_WORLD`` of mpi4py with the few collectives training needs."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this machine

    def allreduce_(self, array):
        """Sum ``array`` over the ranks, in place (one call: the flat gradient buffer)."""
        if not isinstance(array, np.ndarray):
            raise NotImplementedError("MPI training runs on the numpy backend; GPUs would all-reduce through NCCL")
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def sum(self, values):
        """Sums over the ranks of a few host numbers (loss and accuracy totals)."""
        a = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        return a.tolist()

    def any(self, flag):
        """True on every rank if it is true on any (a stop request: every rank stops at the same step)."""
        return self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX) == 1

    def same(self, value):
        """Whether ``value`` (a float) is the same on every rank."""
        v = np.array([value, -value], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX)
        return bool(v[0] == -v[1])

    def gather(self, obj):
        """Every rank's ``obj`` as a list on rank 0 (None on the others): error messages, say."""
        return self.comm.gather(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        """End every rank now (a rank that failed must not leave the others waiting in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)       # the launcher forwards output through its own pipes: let the last lines through
        self.comm.Abort(code)


_WORLD = None


def get_world():
    """The processes of this run: an MPI world under an MPI launcher with more than one process, else one."""
    global _WORLD
    if _WORLD is None:
        n = launched_size()
        if n is None or n == 1:
            _WORLD = SingleProcess()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise UserError(f"this process was started by an MPI launcher with {n} processes, but mpi4py is "
                                f"not installed: pip install -e \".[mpi]\" (mpi4py and an MPI from PyPI)") from None
            _WORLD = MPIWorld(MPI.COMM_WORLD)
    return _WORLD


def check_replicas(world, flat_params, epoch, step):
    """Debug (--check-replicas N): every rank must hold the same weights; a checksum compares them."""
    checksum = float(np.asarray(flat_params, dtype=np.float64).sum())
    if not world.same(checksum):
        raise RuntimeError(f"the processes' weights differ after epoch {epoch + 1}, step {step} (checksum "
                           f"{checksum!r} on rank {world.rank}): their updates were not the same")


def shard(n, world):
    """The slice of ``n`` rows that this rank takes (contiguous, sizes differing by at most one)."""
    bounds = np.linspace(0, n, world.size + 1).astype(int)
    return slice(int(bounds[world.rank]), int(bounds[world.rank + 1]))
