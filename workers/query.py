"""Entry point of the query worker: `python workers/query.py --participant us`.

The same as `biox worker query -p us`; it consumes the `<code>.query` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("query", parser.parse_args().participant)
