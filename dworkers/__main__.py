"""``python -m dworkers``: the same command line as ``dworkers``."""

from dworkers.cli import main

if __name__ == "__main__":
    main()
