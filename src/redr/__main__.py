"""``python -m redr`` (and ``torchrun -m redr``) runs the command-line interface."""
from redr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
