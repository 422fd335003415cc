"""`python cli.py ...` is the same as `autoq ...`."""

from autoq.cli import main

if __name__ == "__main__":
    main()
