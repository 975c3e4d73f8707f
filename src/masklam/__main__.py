"""`python -m masklam` is the same as the `masklam` command."""
from masklam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
