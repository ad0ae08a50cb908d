#!/usr/bin/env bash
# Regenerate streaming/oip/rpc/inference.binpb, the compiled descriptors of
# streaming/oip/rpc/inference.proto that streaming.oip.rpc.messages loads
# (`make proto`; needs grpcio-tools, from the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc --proto_path=streaming/oip/rpc \
    --descriptor_set_out=streaming/oip/rpc/inference.binpb streaming/oip/rpc/inference.proto
echo "wrote streaming/oip/rpc/inference.binpb"
