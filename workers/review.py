"""Entry point of the review worker: `python workers/review.py --participant us`."""

import argparse

from biox.runtime import WorkerKind, run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", required=True)
    run_worker(WorkerKind.review, parser.parse_args().participant)
