"""Entry point of the retrieval worker: `python workers/retrieval.py --participant us`.

The same as `biox worker retrieval -p us`; it consumes the `<code>.retrieval` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("retrieval", parser.parse_args().participant)
