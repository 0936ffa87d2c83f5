"""Python SDK of Mantle, a durable workflow engine.

Quickstart::

    import mantle

    with mantle.Client("127.0.0.1:8080") as client:
        print(client.server_info())
        tenant = client.create_tenant("acme", display_name="ACME Corp")

:class:`Client` is synchronous; :class:`mantle.aio.Client` offers the same methods as
coroutines. Errors are :class:`mantle.errors.MantleError` subclasses.
"""

from mantle import errors
from mantle._config import Address, is_local_host, parse_address
from mantle._version import __version__
from mantle.client import Client
from mantle.errors import MantleError
from mantle.types import ApiKey, Caller, CreatedApiKey, ServerInfo, Tenant

__all__ = [
    "Address",
    "ApiKey",
    "Caller",
    "Client",
    "CreatedApiKey",
    "MantleError",
    "ServerInfo",
    "Tenant",
    "__version__",
    "errors",
    "is_local_host",
    "parse_address",
]
