"""The Open Inference Protocol (v2) over gRPC: the service definition and its server.

``open_inference.proto`` declares the service; ``open_inference_pb2*.py(i)`` are
generated from it by ``make protos`` and committed, so installing the service needs
no protobuf compiler. They are written for protobuf 6's runtime (and the grpcio
they were generated with); regenerate them when those pins move.
"""
