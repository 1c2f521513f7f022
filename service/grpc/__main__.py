"""``python -m service.grpc``: the gRPC server (see ``service.grpc.server``)."""

import sys

from service.grpc.server import main

sys.exit(main())
