"""``python -m bap`` runs the command-line interface."""

from bap.cli.main import main

if __name__ == "__main__":
    main()
