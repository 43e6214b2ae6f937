"""The test run's network guard refuses non-loopback sockets in every process it starts."""
import os
import subprocess
import sys

PROBE = """
import socket, sitecustomize
real = []
sitecustomize._connect = lambda self, address: real.append(address)   # never touch the network
try:
    socket.socket().connect(("192.0.2.1", 443))
    print("connected")
except OSError as e:
    print("refused:", e)
socket.socket().connect(("127.0.0.1", 9))
print("loopback allowed:", real == [("127.0.0.1", 9)])
"""


def test_guard_refuses_outside_loopback_and_logs_it(tmp_path):
    log = tmp_path / "net.log"
    env = {**os.environ, "COURSEKIT_NETGUARD_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout
    assert "refused: network access outside loopback" in out
    assert "loopback allowed: True" in out
    assert "192.0.2.1" in log.read_text()


def test_guard_is_inherited_by_child_processes():
    assert "netguard" in os.environ["PYTHONPATH"]
    out = subprocess.run([sys.executable, "-c", "import socket; print(socket.socket.connect.__module__)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "sitecustomize"
