"""medvault: encrypted, deduplicating, verified backup and recovery for healthcare data."""

import os

# NumPy (the blob index, page checksums) never multiplies matrices here, but its OpenBLAS
# starts a thread per core that spins between calls: on a 2-core server that took a third of
# a restore's CPU. It reads this before numpy is first imported, which is always after us.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
