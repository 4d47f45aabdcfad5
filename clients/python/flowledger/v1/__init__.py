# DO NOT EDIT: generated from protos/ by scripts/gen_protos.sh.
"""Generated protobuf and gRPC stubs of the flowledger.v1 contracts."""
