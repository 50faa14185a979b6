"""The package version, in one place (setup.py reads it; PING and --version report it)."""
__version__ = "0.1.0"
