"""Entry point of the response worker: `python workers/response.py --participant us`.

The same as `biox worker response -p us`; it consumes the `<code>.response` queue.
"""

import argparse

from biox.runtime import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", "-p", required=True)
    run_worker("response", parser.parse_args().participant)
