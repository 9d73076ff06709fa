"""Business logic: explicit arguments, no `request`, domain errors raised."""


class ServiceError(Exception):
    """A refusal the person can act on; its message is safe to show them."""
