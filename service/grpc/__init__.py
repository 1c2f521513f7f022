"""The gRPC front end: the Open Inference Protocol (v2) over gRPC, in a process of its own.

Next to the HTTP front end (``service.api``, Flask), and like it a thin layer: ``servicer``
turns the protobuf messages into calls of the data plane both share
(``service.protocols.v2.dataplane``), ``auth`` checks the API keys, ``server`` runs the
process (``python -m service.grpc``). Nothing here imports Flask.
"""
