"""``python -m cynet``: print the build and thread configuration."""
from cynet import show_config

show_config()
