"""Entry point of the review worker: `python workers/review.py --participant us`.

The same as `biox worker review -p us`; it consumes the `<code>.review` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("review", parser.parse_args().participant)
