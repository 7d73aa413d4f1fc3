"""Entry point for the PyInstaller binary."""

from meshctl.cli.app import main

if __name__ == "__main__":
    main()
