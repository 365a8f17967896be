"""``python -m mrlite`` — the CLI (also how the orchestrator starts heavy stages in subprocesses)."""

from mrlite.cli import main

if __name__ == "__main__":
    main()
