"""A sweep's worker process when the sweep was started from Python:
``python -m toylens._worker --threads T sweep --task DIR N`` (the arguments the toylens binary
takes), for the interpreter has no ``toylens`` executable to start."""

import sys

from . import _toylens

EXIT_RUNNING_ELSEWHERE = 3


def main(argv):
    if len(argv) != 6 or argv[0] != "--threads" or argv[2:4] != ["sweep", "--task"]:
        sys.exit(f"usage: python -m toylens._worker --threads T sweep --task DIR N (got {argv})")
    _toylens.set_num_threads(int(argv[1]))
    outcome = _toylens._sweep_task(argv[4], int(argv[5]))
    print(f"run {argv[5]}: {outcome}")
    if outcome == "elsewhere":
        sys.exit(EXIT_RUNNING_ELSEWHERE)


if __name__ == "__main__":
    main(sys.argv[1:])
