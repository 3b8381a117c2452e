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

import json
import os
import pickle
import socket
import sys
import time
import zlib

import numpy as np

from .errors import PeerLost, ReplicasDiffer, UserError

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

    def broadcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code):  # pragma: no cover - one process just exits
        raise SystemExit(code)


# Before a run's first step the processes may wait this long for each other (each reads its data and, on
# resume, rank 0 its checkpoint); from then on, the run's --peer-timeout.
START_TIMEOUT = 600.0
ARRIVED = 7                 # the tag of the small message each process sends every other at each collective


class MPIWorld:
    """``COMM_WORLD`` of mpi4py with the few collectives training needs, none of which waits forever.

    Every collective is MPI's non-blocking one, polled until it completes or ``timeout`` seconds pass; beside it
    each process sends every other a token ("I arrived at collective k"). A process whose collective does not
    complete in time (a process that ended, a host or link that went down: TCP alone would wait many minutes)
    raises PeerLost naming the processes whose tokens did not come, and their hosts; so does an error MPI reports
    about them. That is one small message per peer and collective: for the 2-8 processes of a small cluster,
    microseconds against a step's all-reduce of the whole gradient."""

    def __init__(self, comm, timeout=START_TIMEOUT):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this machine
        self.hosts = comm.allgather(socket.gethostname())                   # for the messages that name one
        self.peers = [r for r in range(self.size) if r != self.rank]
        self.timeout, self.where, self.calls = timeout, "", 0

    def collective(self, start):
        """Run the non-blocking collective that ``start()`` begins (it returns its request) to completion, or
        raise PeerLost within ``self.timeout`` seconds."""
        MPI = self.MPI
        self.calls += 1
        token = np.array([self.calls], dtype=np.int64)
        arrived = np.zeros(self.size, dtype=np.int64)
        try:
            sends = [self.comm.Isend(token, dest=r, tag=ARRIVED) for r in self.peers]
            recvs = [self.comm.Irecv(arrived[r:r + 1], source=r, tag=ARRIVED) for r in self.peers]
            requests = [start(), *recvs, *sends]
        except MPI.Exception as e:
            raise self.lost(self.peers, cause=e) from None
        t0 = time.monotonic()
        while True:
            try:
                if MPI.Request.Testall(requests):
                    return
            except MPI.Exception as e:
                raise self.lost(self.missing(recvs, arrived), cause=e) from None
            waited = time.monotonic() - t0
            if waited > self.timeout:
                raise self.lost(self.missing(recvs, arrived)) from None
            if waited > 0.002:          # the others are late (evaluating, saving): poll without taking a core
                time.sleep(0.0005 if waited < 1 else 0.01)

    def missing(self, recvs, arrived):
        """The peers whose tokens of this collective have not come (all of them if every token came: the
        collective itself stalled afterwards)."""
        late = []
        for r, request in zip(self.peers, recvs):
            try:
                done = request.Test()
            except self.MPI.Exception:
                done = False
            if not done or arrived[r] != self.calls:
                late.append(r)
        return late or self.peers

    def lost(self, ranks, cause=None):
        why = None if cause is None else " ".join(str(cause).split())[:200]
        return PeerLost([(r, self.hosts[r]) for r in ranks], (self.rank, self.hosts[self.rank]), self.timeout,
                        self.where, why)

    def allreduce_(self, array):
        """Sum ``array`` over the ranks, in place (one call: the flat gradient buffer)."""
        if not isinstance(array, np.ndarray):
            raise NotImplementedError("MPI training runs on the numpy backend; GPUs would all-reduce through NCCL")
        self.collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM))
        return array

    def sum(self, values):
        """Sums over the ranks of a few host numbers (loss and accuracy totals)."""
        a = np.asarray(values, dtype=np.float64)
        return self.allreduce_(a).tolist()

    def any(self, flag):
        """True on every rank if it is true on any (a stop request: every rank stops at the same step)."""
        a = np.array([int(bool(flag))], dtype=np.int64)
        self.collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.MAX))
        return bool(a[0])

    def same(self, value):
        """Whether ``value`` (a float) is the same on every rank."""
        v = np.array([value, -value], dtype=np.float64)
        self.collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX))
        return bool(v[0] == -v[1])

    def allgather(self, obj):
        """Every rank's ``obj`` (pickled) as a list, on every rank."""
        mine = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        size, sizes = np.array([mine.size], dtype=np.int64), np.zeros(self.size, dtype=np.int64)
        self.collective(lambda: self.comm.Iallgather(size, sizes))
        everyone = np.empty(int(sizes.sum()), dtype=np.uint8)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.collective(lambda: self.comm.Iallgatherv(mine, [everyone, sizes, offsets, self.MPI.BYTE]))
        return [pickle.loads(everyone[o:o + n].tobytes()) for o, n in zip(offsets, sizes)]

    def gather(self, obj):
        """Every rank's ``obj`` as a list on rank 0 (None on the others): error messages, say."""
        everyone = self.allgather(obj)
        return everyone if self.rank == 0 else None

    def broadcast(self, obj):
        """Rank 0's ``obj`` (pickled), on every rank: a checkpoint only rank 0's host holds, say."""
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], dtype=np.int64)
        self.collective(lambda: self.comm.Ibcast(size, root=0))
        buf = data.copy() if self.rank == 0 else np.empty(int(size[0]), dtype=np.uint8)
        self.collective(lambda: self.comm.Ibcast(buf, root=0))
        return obj if self.rank == 0 else pickle.loads(buf.tobytes())

    def barrier(self):
        self.collective(lambda: self.comm.Ibarrier())

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
    """Debug (--check-replicas N): every rank must hold the same weights; a checksum compares them. Drift is a
    ReplicasDiffer on every rank (one line from rank 0, exit status 2)."""
    checksum = float(np.asarray(flat_params, dtype=np.float64).sum())
    sums = world.allgather(checksum)
    if len(set(sums)) > 1:
        differ = [r for r, c in enumerate(sums) if c != sums[0]]
        raise ReplicasDiffer(f"the processes' weights differ after epoch {epoch + 1}, step {step}: "
                             f"{'rank' if len(differ) == 1 else 'ranks'} {', '.join(map(str, differ))} "
                             f"{'holds' if len(differ) == 1 else 'hold'} other weights than rank 0 (checksums "
                             f"{sums[0]!r} and {sums[differ[0]]!r}): their updates were not the same, so the run "
                             f"stopped here")


# Settings each rank may hold for itself: the data's path (each host reads its own copy; the data's checksum is
# compared instead).
LOCAL_SETTINGS = ("data_dir",)


def check_same_settings(world, cfg):
    """Every rank must run with the same settings: a difference stops every rank before the run's first write,
    with one line naming the setting, its values and the ranks."""
    mine = {k: json.dumps(v, sort_keys=True, default=str) for k, v in cfg.items() if k not in LOCAL_SETTINGS}
    everyone = world.allgather(mine)
    for key in sorted(set().union(*everyone)):
        values = [settings.get(key) for settings in everyone]
        if len(set(values)) > 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            raise ReplicasDiffer(
                f"the processes were started with different settings: {key} is {values[0]} on rank 0 but "
                f"{values[odd[0]]} on rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))}; start every "
                f"rank with the same flags (and config file)")


def data_checksum(*arrays):
    """A checksum of what a rank read (CRC-32 of the arrays' bytes, chained)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    return crc


def check_same_data(world, checksum):
    """Every rank must have read the same images and labels (each host from its own --data-dir; ``checksum``:
    data_checksum of what this rank read): ranks whose data differ stop the run before its first write, with
    one line naming them and their hosts."""
    everyone = world.allgather((checksum, socket.gethostname()))
    odd = [r for r, (crc, _) in enumerate(everyone) if crc != everyone[0][0]]
    if odd:
        where = ", ".join(f"rank {r} on host {everyone[r][1]}" for r in odd)
        raise ReplicasDiffer(f"the processes read different data: {where} read other images or labels than "
                                  f"rank 0 on host {everyone[0][1]} from its --data-dir; give every host the same "
                                  f"dataset")


def shard(n, world):
    """The slice of ``n`` rows that this rank takes (contiguous, sizes differing by at most one)."""
    bounds = np.linspace(0, n, world.size + 1).astype(int)
    return slice(int(bounds[world.rank]), int(bounds[world.rank + 1]))
