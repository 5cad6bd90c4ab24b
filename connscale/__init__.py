"""connscale: how many concurrent keepalive TCP connections can this box hold?"""

__version__ = "0.1.0"
