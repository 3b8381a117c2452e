"""Two "hosts" on one machine, for the multi-host tests and benchmarks/bench_mpi.py.

Each host is a network namespace of its own (made with ``ip netns``; root only), the two joined by a veth pair
whose addresses exist only inside them, so MPI's traffic between the hosts crosses a real network stack; each
process started on a host also gets the host's own hostname (a UTS namespace) and its own private directory
(a mount namespace in which ``backing[i]`` is bind-mounted at ``private``: the same path on both hosts, other
files on each, as on two machines without a shared file system). The code (this checkout, the Python) is seen
by both, as software installed on every machine would be.

MPICH's launcher (hydra) starts the processes of another host with a command of its choice in place of ssh:
``launch`` below, a script that runs the command in that host's namespaces. mpiexec itself runs on host A.
UCX, MPICH's transport, would see that both hosts are one machine and pass messages through shared memory;
``UCX_TLS=tcp,self`` makes it use the network, as it would between two machines.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

ADDRESSES = ("10.251.0.1", "10.251.0.2")        # a private range; they exist only inside the two namespaces
HOSTNAMES = ("npvit-host-a", "npvit-host-b")


def find_mpiexec():
    """The MPI launcher: mpiexec (or Open MPI's mpirun) on PATH, or the one the mpich wheel put beside this
    Python; None if there is none. (tests/test_mpi.py, tests/test_two_hosts.py and benchmarks/bench_mpi.py.)"""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return shutil.which("mpiexec") or shutil.which("mpirun") or (beside if os.access(beside, os.X_OK) else None)


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Refused(Exception):
    """This machine cannot make the namespaces (not root, no ``ip``, a kernel or container that forbids them)."""


class TwoHosts:
    def __init__(self, root):
        tag = os.getpid() % 100_000
        self.root = str(root)
        self.namespaces = (f"npvit{tag}a", f"npvit{tag}b")
        self.devices = (f"nv{tag}a", f"nv{tag}b")           # interface names have at most 15 characters
        self.private = os.path.join(self.root, "private")
        self.backing = tuple(os.path.join(self.root, f"host-{c}") for c in "ab")
        self.launch = os.path.join(self.root, "launch")
        self.made = []

    # -- making and removing them --------------------------------------------------------------------------------
    def __enter__(self):
        if os.geteuid() != 0:
            raise Refused("network namespaces need root (ip netns add)")
        for tool in ("ip", "unshare", "mount", "hostname"):
            if shutil.which(tool) is None:
                raise Refused(f"{tool} is not installed")
        launcher = find_mpiexec()
        version = sh(launcher, "--version", check=False) if launcher else None
        if version is None or "HYDRA" not in version.stdout + version.stderr:
            raise Refused(f"the hosts are started through MPICH's launcher (hydra); {launcher or 'no mpiexec'} is "
                          f"not it: pip install -e \".[mpi]\"")
        try:
            self.make()
        except subprocess.CalledProcessError as e:
            self.__exit__()
            raise Refused(f"{' '.join(e.cmd)}: {(e.stderr or '').strip() or e.returncode}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def make(self):
        a, b = self.namespaces
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.devices[0], "netns", a, "type", "veth", "peer", "name", self.devices[1],
           "netns", b)
        for ns, dev, address in zip(self.namespaces, self.devices, ADDRESSES):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for path in (self.private, *self.backing):
            os.makedirs(path, exist_ok=True)
        self.enter = []
        for ns, backing, name, c in zip(self.namespaces, self.backing, HOSTNAMES, "ab"):
            path = os.path.join(self.root, f"on-host-{c}")      # on-host-a COMMAND...: COMMAND, run on host a
            with open(path, "w") as f:
                f.write(f"#!/bin/sh\nexec ip netns exec {ns} unshare --mount --uts sh -c 'mount --bind {backing} "
                        f"{self.private} && hostname {name} && exec \"$@\"' sh \"$@\"\n")
            os.chmod(path, 0o755)
            self.enter.append(path)
        cases = "".join(f"  {address}) exec {enter} sh -c \"$*\" ;;\n" for address, enter in zip(ADDRESSES, self.enter))
        with open(self.launch, "w") as f:           # hydra calls it as it would ssh: launch HOST COMMAND...
            f.write("#!/bin/sh\n# MPICH's launcher runs a process on HOST this way instead of through ssh\n"
                    f'host=$1; shift\ncase $host in\n{cases}  *) echo "no such host: $host" >&2; exit 1 ;;\nesac\n')
        os.chmod(self.launch, 0o755)
        self.wait_for_link()

    def wait_for_link(self, seconds=10):
        """Until both ends of the link are up (a veth end comes up a moment after it is told to)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            states = [sh("ip", "-n", ns, "-br", "link", "show", dev).stdout.split()
                      for ns, dev in zip(self.namespaces, self.devices)]
            if all(s[1] == "UP" and "LOWER_UP" in s[-1] for s in states):
                return
            time.sleep(0.1)
        raise Refused(f"the link between the two namespaces did not come up within {seconds} s")

    def __exit__(self, *exc):
        for ns in self.made:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        self.made = []

    # -- using them ---------------------------------------------------------------------------------------------
    def on_host(self, i, argv):
        """argv, to run on host i (0 or 1)."""
        return [self.enter[i], *map(str, argv)]

    def mpiexec(self, argv, per_host=1, flags=()):
        """The command that runs ``argv`` as ``per_host`` MPI processes on each host (mpiexec on host A)."""
        hosts = ",".join(f"{address}:{per_host}" for address in ADDRESSES)
        return self.on_host(0, [find_mpiexec(), "-launcher", "rsh", "-launcher-exec", self.launch, "-hosts", hosts,
                                "-n", 2 * per_host, "-genv", "UCX_TLS", "tcp,self", *flags, *argv])

    def link_command(self, state):
        """The command that takes the link between the hosts down (or up), run on host B or outside."""
        return f"ip -n {self.namespaces[1]} link set {self.devices[1]} {state}"

    def link(self, state):
        subprocess.run(self.link_command(state), shell=True, check=True)
        if state == "up":
            self.wait_for_link()

    def bytes_received(self, i=1):
        """Bytes host i's end of the link has received (to show that traffic crossed it)."""
        out = sh("ip", "-n", self.namespaces[i], "-s", "link", "show", self.devices[i]).stdout.split("\n")
        return int(out[3].split()[0])

    def processes(self, word):
        """The Python processes on either host running ``word`` (a script): [(host, pid)]."""
        found = []
        for i, ns in enumerate(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                    if argv[0] == sys.executable.encode() and word.encode() in argv[1]:
                        found.append((i, int(pid)))
                except OSError:
                    pass
        return found
