"""``python -m fabric_core.cli`` is the ``fabric`` command."""

from fabric_core.cli.main import main

if __name__ == "__main__":
    main()
