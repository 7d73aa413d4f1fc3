"""meshctl: a mesh VPN whose coordination plane is a git repository of signed files."""

__version__ = "0.1.0"
