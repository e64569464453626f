"""A cut link between two nodes: two launchers in network namespaces the test creates (a veth pair between
them) and removes. Deleting the link while the job runs ends both nodes within the collective timeout."""
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, write_micro_dataset
from test_launch import RUN

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # multi-process runs of minutes each: `make test-heavy`
TIMEOUT_S = 20  # launch.timeout_s of RUN


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_namespaces():
    """Namespaces A (10.217.0.1) and B (10.217.0.2) joined by a veth pair named s4d0 on both sides."""
    tag = f"{os.getpid() % 100000}"
    names = [f"s4dA{tag}", f"s4dB{tag}"]
    if os.geteuid() != 0 or ip("netns", "add", names[0]).returncode:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    try:
        steps = [("netns", "add", names[1]), ("link", "add", f"v{tag}a", "type", "veth", "peer", "name", f"v{tag}b"),
                 ("link", "set", f"v{tag}a", "netns", names[0]), ("link", "set", f"v{tag}b", "netns", names[1])]
        for n, (ns, side) in enumerate(zip(names, "ab")):
            steps += [("-n", ns, "link", "set", f"v{tag}{side}", "name", "s4d0"),
                      ("-n", ns, "addr", "add", f"10.217.0.{n + 1}/24", "dev", "s4d0"),
                      ("-n", ns, "link", "set", "s4d0", "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            result = ip(*step)
            assert result.returncode == 0, (step, result.stderr)
        yield names
    finally:
        for ns in names:
            ip("netns", "del", ns)


def test_a_cut_link_ends_both_nodes_within_the_timeout(tmp_path, two_namespaces):
    write_micro_dataset(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hook = tmp_path / "cut.paused"

    def node(rank: int, extra_env: dict) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", two_namespaces[rank], sys.executable, "-m", "s4d.train.launch",
               "--nnodes", "2", "--node_rank", str(rank), "--master_addr", "10.217.0.1", "--master_port", "29517",
               "--nproc_per_node", "1", "s4d.train.finetune", *RUN, "launch.socket_ifname=s4d0", "--out", "cut"]
        return subprocess.Popen(cmd, cwd=tmp_path, env={**env, **extra_env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    nodes = [node(0, {}), node(1, {"S4D_STEP_HOOK": "7:pause:1", "S4D_HOOK_FILE": str(hook)})]
    deadline = time.time() + 300
    while not hook.exists():
        assert all(n.poll() is None for n in nodes), [n.communicate() for n in nodes]
        assert time.time() < deadline
        time.sleep(0.2)
    assert ip("-n", two_namespaces[0], "link", "del", "s4d0").returncode == 0  # the cable is pulled
    cut = time.time()
    hook.unlink()  # rank 1 goes on into a collective that can no longer reach rank 0
    outs = [n.communicate(timeout=120) for n in nodes]
    elapsed = time.time() - cut
    assert elapsed < 60, elapsed
    assert [n.returncode for n in nodes] == [1, 1], outs
    for rank, (_, err) in enumerate(outs):
        assert f"rank {rank} of 2 (node {rank}): a collective failed" in err
    lines = [line for _, err in outs for line in err.splitlines() if "a collective failed" in line]
    assert "lost: rank 1 (node 1) did not answer" in outs[0][1], lines  # node 0 names the node it lost
    assert "node 0 (rank 0, the rendezvous host 10.217.0.1:29517) cannot be reached" in outs[1][1]
    print(f"both nodes ended {elapsed:.1f} s after the cut (launch.timeout_s={TIMEOUT_S})")
