"""Entry point of the intake worker: `python workers/intake.py --participant us`.

The same as `biox worker intake -p us`; it consumes the `<code>.intake` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("intake", parser.parse_args().participant)
