"""Generated protobuf and gRPC stubs of the mantle.v1 API.

Do not edit: regenerate with sdk-python/scripts/generate.sh.
"""
