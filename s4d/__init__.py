"""s4d: train, evaluate and serve dynamic facial expression recognition models with the S4D method.

The one place the project sets OpenMP's wait policy. Idle OpenMP workers sleep instead of spinning: on a
shared 2-core CPU spinning workers were measured to make every training kernel 20-200x slower beside
DeepSpeed's ZeRO-2/3 thread (600 ms vs 3 ms for a micro forward) and face detection 5-7x slower beside
video decoding. libgomp reads the variable once, when torch loads, so it is set here: every `s4d.*`
import runs this file first, and the entry points that may load torch before any s4d module (the
service, the benchmarks, the tests' conftest) import s4d first. A value the user set wins.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
