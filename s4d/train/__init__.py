"""Training engines. Importing this package before torch makes OpenMP threads sleep instead of spin
while they wait: DeepSpeed's ZeRO-2/3 run a thread of their own beside torch's, and with spinning OpenMP
workers on a 2-core CPU every kernel was measured 20-200x slower (600 ms vs 3 ms for a micro forward)."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
