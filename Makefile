# model-service: the two commands are `make run` and `make test`.

PORT ?= 8080
WORKERS ?=
STORE ?= model_store
RUNTIME_DIR ?= .run
PYTHON ?= python3
GRPC_PORT ?= 8081

VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
WORKERS_FLAG := $(if $(WORKERS),--workers $(WORKERS),)
PROTO_DIR := service/protocols/grpc

.PHONY: install run stop test lint fmt protos bench loadtest clean

# Versions in constraints.txt are the ones the test suite passes with.
$(INSTALLED): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/modelctl train-demo --if-empty --store $(STORE)
	@# modelctl serve prints the URL and a curl example that works against this store.
	$(BIN)/modelctl serve --store $(STORE) --port $(PORT) --runtime-dir $(RUNTIME_DIR) \
		--grpc-port $(GRPC_PORT) $(WORKERS_FLAG)

stop:
	@if test -x $(BIN)/modelctl; then $(BIN)/modelctl stop --runtime-dir $(RUNTIME_DIR); \
	else echo "nothing was running"; fi

test: $(INSTALLED)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check service tests loadtests deploy
	$(BIN)/ruff format --check service tests loadtests deploy

fmt: $(INSTALLED)
	$(BIN)/ruff format service tests loadtests deploy
	$(BIN)/ruff check --fix service tests loadtests deploy

# The generated modules are committed (no compiler at install time); they need the
# protobuf and grpcio runtimes at least as new as the grpcio-tools that wrote them.
# Their messages go in a descriptor pool of their own, as tritonclient registers the
# same names in the default one; the stub imports its messages package-relative.
protos: $(INSTALLED)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		$(PROTO_DIR)/open_inference.proto
	sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
		$(PROTO_DIR)/open_inference_pb2.py
	sed -i 's/^from service\.protocols\.grpc import /from . import /' $(PROTO_DIR)/open_inference_pb2_grpc.py

bench: $(INSTALLED)
	$(BIN)/python loadtests/bench.py

loadtest: $(INSTALLED)
	$(BIN)/python loadtests/run_loadtest.py --store $(STORE) --port $(PORT)

clean: stop
	rm -rf $(VENV) $(RUNTIME_DIR) loadtests/reports build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "model_store/ is left as it is; remove its models by hand to retrain the demos"
