"""Entry point of the audit worker: `python workers/audit.py --participant us`.

The same as `biox worker audit -p us`; it consumes the `<code>.audit` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("audit", parser.parse_args().participant)
