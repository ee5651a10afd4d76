"""``python -m fabric_core`` runs the ``fabric`` command (the same entry point as the script), for environments where
another package's ``fabric`` script shadows ours: Lightning installs one too."""

from fabric_core.cli import main

if __name__ == "__main__":
    main()
