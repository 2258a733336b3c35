"""Let `python -m dreamcli` behave exactly like the `dream` command."""

from dreamcli.cli import main

if __name__ == "__main__":
    main()
