# model-service: the two commands are `make run` and `make test`.

PORT ?= 8080
WORKERS ?=
STORE ?= model_store
RUNTIME_DIR ?= .run
PYTHON ?= python3
GRPC_PORT ?= 8081
SIGNING_DIR ?= .signing
SIGNING_KEY := $(SIGNING_DIR)/signing-key.pem
SIGNING_PUBLIC_KEY := $(SIGNING_DIR)/signing-key.pub.pem

VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
WORKERS_FLAG := $(if $(WORKERS),--workers $(WORKERS),)
# The edge (Nginx), each optional: RATE_LIMIT=50r/s (or off), RATE_LIMIT_BURST, CONN_LIMIT
# (0: none), ADMIN_NETWORKS="10.0.0.0/8 192.168.1.0/24", and HTTPS with TLS_CERT=... TLS_KEY=...
# [TLS_PORT=8443]. Unset: the settings' defaults (docs/guides/security/edge.md).
EDGE_FLAGS := $(if $(RATE_LIMIT),--rate-limit $(RATE_LIMIT),) \
	$(if $(RATE_LIMIT_BURST),--rate-limit-burst $(RATE_LIMIT_BURST),) \
	$(if $(CONN_LIMIT),--conn-limit $(CONN_LIMIT),) \
	$(foreach network,$(ADMIN_NETWORKS),--admin-network $(network)) \
	$(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY),) \
	$(if $(TLS_PORT),--tls-port $(TLS_PORT),)
PROTO_DIR := service/protocols/grpc
BENCH_JSON ?= loadtests/reports/bench.json
PEERS_VENV := .bench-peers
# The newest MLflow whose packages install next to scikit-learn 1.9.1 here.
MLFLOW_VERSION := 3.17.2

.PHONY: install signed-store run stop test lint fmt docs protos bench bench-workers bench-cpu bench-peers bench-shadow loadtest soak clean \
	deploy rollback-release fleet-up fleet-down ansible

# Versions in constraints.txt are the ones the test suite passes with. The training extra
# trains the demos (make run) and draws the model card's plots; the hosts install without it.
$(INSTALLED): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,training]'
	touch $@

install: $(INSTALLED)

# The key pair that signs this machine's store: made once, outside model_store/ and the
# runtime dir (make clean keeps it, as it keeps model_store/); git ignores it.
$(SIGNING_KEY): | $(INSTALLED)
	$(BIN)/modelctl signing keygen --out $(SIGNING_DIR)

# $(STORE) with the demo models when it holds none, every version signed with this machine's
# key: those it trains now, and those it published before it signed (an older make run).
signed-store: $(INSTALLED) $(SIGNING_KEY)
	$(BIN)/modelctl train-demo --if-empty --store $(STORE) --signing-key $(SIGNING_KEY)
	$(BIN)/modelctl sign --unsigned --store $(STORE) --key $(SIGNING_KEY)

run: signed-store
	@# modelctl serve prints the URL and a curl example that works against this store.
	MODEL_SERVICE_TRUSTED_SIGNING_KEYS=$(abspath $(SIGNING_PUBLIC_KEY)) \
	$(BIN)/modelctl serve --store $(STORE) --port $(PORT) --runtime-dir $(RUNTIME_DIR) \
		--grpc-port $(GRPC_PORT) $(WORKERS_FLAG) $(EDGE_FLAGS)

stop:
	@if test -x $(BIN)/modelctl; then $(BIN)/modelctl stop --runtime-dir $(RUNTIME_DIR); \
	else echo "nothing was running"; fi

# Two workers (pytest-xdist), each taking whole test modules, tests/fleet as one unit and first
# (tests/conftest.py groups them): the fleet's deploys mostly wait on hosts while the rest
# runs. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: $(INSTALLED)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope

# Style, formatting, and the layering contracts of .importlinter (the core never imports
# the web layer; the store imports neither the runtime nor training).
lint: $(INSTALLED)
	$(BIN)/ruff check service tests loadtests deploy
	$(BIN)/ruff format --check service tests loadtests deploy
	$(BIN)/lint-imports

fmt: $(INSTALLED)
	$(BIN)/ruff format service tests loadtests deploy
	$(BIN)/ruff check --fix service tests loadtests deploy

# docs/reference/{configuration,modelctl,metadata}.md from the code they describe (Settings,
# the click commands, metadata.yaml's JSON Schema); tests/test_reference_docs.py fails when
# a committed page is not what this writes.
docs: $(INSTALLED)
	$(BIN)/python -m service.reference_docs

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

# The performance goals as one table (and JSON) from one run, ~8 minutes; BENCH_ARGS adds
# options, e.g. BENCH_ARGS="--rounds 3" or "--worker-class gthread --threads 4". Then the
# shadow row (bench-shadow).
bench: $(INSTALLED)
	$(BIN)/python loadtests/bench.py --json $(BENCH_JSON) $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-shadow

# S: iris-classifier's p99 with an experiment's shadow (a candidate 50 ms a row, share 0.2)
# over its p99 without, and a second load without as the measurement's own noise (--control):
# 8 rounds with workers that do not restart (the shadow's own cost; two loads without differ
# by up to ±30 % round by round, so 4 rounds say little), ~6 minutes; then 4 with workers
# restarting every 2,000 requests, several times in every load, so both arms see as many
# restarts (under the service's 20,000 they fall in the same load of each round), ~3 minutes.
bench-shadow: $(INSTALLED)
	$(BIN)/python loadtests/shadow_cost.py --control --max-requests 0 --rounds 8 --json loadtests/reports/shadow_cost.json
	$(BIN)/python loadtests/shadow_cost.py --control --max-requests 2000 --json loadtests/reports/shadow_cost_restarts.json

# iris-classifier's single-row and 1,000-row loads under sync and gthread workers.
bench-workers: $(INSTALLED)
	$(BIN)/python loadtests/worker_models.py --json loadtests/reports/worker_models.json

# Where one single-row request's CPU time goes (Gunicorn workers, Nginx) under wrk, for
# hello, the naive handler on onnxruntime and the service.
bench-cpu: $(INSTALLED)
	$(BIN)/python loadtests/worker_cpu.py --rounds 2 --json loadtests/reports/worker_cpu.json

# Optional peers for `make bench`: MLflow's scoring server in a virtualenv of its own, with
# the scikit-learn and numpy the demo pickles are written with.
bench-peers:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet mlflow==$(MLFLOW_VERSION) \
		$(shell grep -E '^(numpy|scipy|scikit-learn)==' constraints.txt)

# --- A fleet of hosts (deploy/ansible, docs/guides/fleet-deploy.md) ---------------------
# Ansible runs from a virtualenv of its own, so the server's install does not carry it.
ANSIBLE_VENV := .ansible-venv
ANSIBLE_INSTALLED := $(ANSIBLE_VENV)/.installed
INVENTORY ?=
RELEASE ?=
HOSTS ?= 3
FLEET_DIR ?= .fleet

$(ANSIBLE_INSTALLED): deploy/ansible/requirements.txt
	test -x $(ANSIBLE_VENV)/bin/python || $(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ANSIBLE_VENV)/bin/python -m pip install --quiet -r deploy/ansible/requirements.txt
	touch $@

ansible: $(ANSIBLE_INSTALLED)

# The current checkout as a release (a wheel and a wheelhouse of its dependencies), rolled
# out one host at a time. RELEASE=name overrides the release's name.
deploy: $(INSTALLED) $(ANSIBLE_INSTALLED)
	@test -n "$(INVENTORY)" || { echo "usage: make deploy INVENTORY=path/to/inventory.yaml"; exit 2; }
	$(BIN)/python deploy/ansible/build_release.py --out dist/release $(if $(RELEASE),--release $(RELEASE),)
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(ANSIBLE_VENV)/bin/ansible-playbook \
		-i $(INVENTORY) deploy/ansible/deploy.yml -e release_dir=$(CURDIR)/dist/release

# Every host back to the release it ran before the last deploy, one host at a time.
rollback-release: $(ANSIBLE_INSTALLED)
	@test -n "$(INVENTORY)" || { echo "usage: make rollback-release INVENTORY=path/to/inventory.yaml"; exit 2; }
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(ANSIBLE_VENV)/bin/ansible-playbook \
		-i $(INVENTORY) deploy/ansible/rollback-release.yml

# A fleet of network namespaces on this machine (root only): HOSTS app hosts, a balancer
# and a store host, each with its own sshd; its inventory is $(FLEET_DIR)/inventory.yaml.
# Its first deploy seeds the fleet's store with the demo models (trained here if $(STORE)
# holds none, as make run does).
fleet-up: signed-store
	$(BIN)/python deploy/testfleet/fleet.py up --hosts $(HOSTS) --dir $(FLEET_DIR) \
		--seed-store $(STORE) --trusted-key $(SIGNING_PUBLIC_KEY)

fleet-down:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) deploy/testfleet/fleet.py down --dir $(FLEET_DIR)

loadtest: $(INSTALLED)
	$(BIN)/python loadtests/run_loadtest.py --store $(STORE) --port $(PORT)

# Memory and file descriptors of every Gunicorn process over a steady load (not in CI):
# 70 % of the highest rate of 1-row and 1,000-row predictions for SOAK_MINUTES (30), a
# sample a minute; PASS or FAIL, table on stdout, JSON in loadtests/reports/soak.json.
# SOAK_ARGS adds options, e.g. SOAK_ARGS="--max-requests 0" (no worker recycling).
soak: $(INSTALLED)
	$(BIN)/modelctl train-demo --if-empty --store $(STORE)
	$(BIN)/python loadtests/soak.py --store $(STORE) $(WORKERS_FLAG) \
		$(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES),) $(SOAK_ARGS)

clean: stop
	rm -rf $(VENV) $(PEERS_VENV) $(ANSIBLE_VENV) dist $(RUNTIME_DIR) loadtests/reports build *.egg-info .pytest_cache .ruff_cache \
		.import_linter_cache .grimp_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "model_store/ is left as it is; remove its models by hand to retrain the demos"
