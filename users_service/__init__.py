"""users-service: the service that owns the users of the system."""

__version__ = "0.1.0"
