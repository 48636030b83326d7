"""Entry point of the notice worker: `python workers/notice.py --participant us`.

The same as `biox worker notice -p us`; it consumes the `<code>.notice` queue: the
partners' signed audit checkpoints.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("notice", parser.parse_args().participant)
