"""biox: message-queue driven exchange for biometric immigration queries."""

import os

# Several worker processes share few cores; OpenMP threads that spin while waiting for
# work (the libgomp default) burn the CPU the broker and the other workers need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
