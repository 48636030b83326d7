"""Entry point of the retrieval worker: `python workers/retrieval.py --participant us`."""

import argparse

from biox.runtime import WorkerKind, run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participant", required=True)
    run_worker(WorkerKind.retrieval, parser.parse_args().participant)
