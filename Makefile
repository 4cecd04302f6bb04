# Two commands matter: `make demo` (the main job) and `make test` (`make test-fast` while you work).
# Each creates the environments it needs, so both work on a fresh clone.
PY ?= python3.11
VENV := .venv
BVENV := .venv-blender
BVENV313 := .venv-blender313
TORCH_PIN := torch==2.13.0
# Empty: the demo picks a prompt the chosen preset knows (scripts/demo.py).
PROMPT ?=
PRESET ?= auto

.PHONY: test test-fast demo addon bench micro-priors lint venv venv-blender venv-blender313 venv-blender-lts test-backend test-addon \
  test-addon-lts clean gltf-validator node-client

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# CPU build of torch for tests and the CPU demo; GPU users install their own CUDA build.
	$(VENV)/bin/pip install -q "$(TORCH_PIN)"
	$(VENV)/bin/pip install -q -e ".[backend,ray,dev]"
	touch $@

$(BVENV)/.stamp: blender_addon/requirements-test.txt
	$(PY) -m venv $(BVENV)
	$(BVENV)/bin/pip install -q --upgrade pip
	$(BVENV)/bin/pip install -q -r blender_addon/requirements-test.txt
	touch $@

venv: $(VENV)/.stamp
venv-blender: $(BVENV)/.stamp

# Blender 5.3 needs Python 3.13; only built where such an interpreter exists.
venv-blender313:
	@py313=$$(scripts/find-python313.sh); \
	if [ -n "$$py313" ]; then \
	  if [ ! -f $(BVENV313)/.stamp ]; then \
	    $$py313 -m venv $(BVENV313) && $(BVENV313)/bin/pip install -q --upgrade pip && \
	    $(BVENV313)/bin/pip install -q -r blender_addon/requirements-test-313.txt && touch $(BVENV313)/.stamp; \
	  fi; \
	else echo "NOTE: no Python 3.13 interpreter found: skipping the Blender 5.3 environment"; fi

# Blender 4.2 LTS and 4.5 LTS as Python modules (Python 3.11), for `make test-addon-lts` (not part of
# `make test`: see blender_version_min in blender_addon/blender_manifest.toml).
BVENV42 := .venv-blender42
BVENV45 := .venv-blender45
$(BVENV42)/.stamp $(BVENV45)/.stamp: blender_addon/requirements-test.txt
	$(PY) -m venv $(@D)
	$(@D)/bin/pip install -q --upgrade pip
	$(@D)/bin/pip install -q "bpy==$(if $(findstring 42,$(@D)),4.2,4.5).*" \
	  $$(grep -v -e '^bpy' -e '^#' blender_addon/requirements-test.txt)
	touch $@

venv-blender-lts: $(BVENV42)/.stamp $(BVENV45)/.stamp

test-addon-lts: venv venv-blender-lts addon
	scripts/test-addon.sh $(BVENV42)
	scripts/test-addon.sh $(BVENV45)

addon: venv venv-blender venv-blender313
	$(VENV)/bin/python build_addon.py --blender-python $(BVENV)/bin/python \
	  $(if $(wildcard $(BVENV313)/.stamp),--blender-python $(BVENV313)/bin/python)

# The Khronos glTF validator (npm package, pinned in tools/gltf-validator/package-lock.json) for the
# tests that check the .glb files the backend writes.
GLTF_VALIDATOR := tools/gltf-validator/node_modules/gltf-validator/package.json
$(GLTF_VALIDATOR): tools/gltf-validator/package-lock.json
	cd tools/gltf-validator && npm ci --no-audit --no-fund --silent
	touch $@

gltf-validator: $(GLTF_VALIDATOR)

# The protocol's second-language client (Node.js: npm's zeromq, whose package carries its prebuilt addon, and
# @msgpack/msgpack, pinned in tools/node-client/package-lock.json), run against a real backend by
# tests/backend/test_node_client.py.
NODE_CLIENT := tools/node-client/node_modules/zeromq/package.json
$(NODE_CLIENT): tools/node-client/package-lock.json
	cd tools/node-client && npm ci --no-audit --no-fund --silent --ignore-scripts
	touch $@

node-client: $(NODE_CLIENT)

lint: venv
	$(VENV)/bin/ruff check .

# The backend's suites run a module per worker on every core (pytest-xdist; tests/conftest.py groups them),
# each worker with one torch thread (torch's default two threads a process made a tiny job 8-9 times slower
# on a busy two-core machine).
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadscope

test-backend: venv gltf-validator node-client
	$(PYTEST) tests/protocol tests/backend tests/test_*.py -q

# The add-on's tests, inside Blender 5.0 and, where its environment exists, Blender 5.3 (a recipe's variables
# are expanded when it runs, so a 5.3 environment just built by venv-blender313 counts).
ADDON_RUNS = "scripts/test-addon.sh $(BVENV)" \
  $(if $(wildcard $(BVENV313)/.stamp),"scripts/test-addon.sh $(BVENV313)",\
  "echo NOTE: Blender 5.3 add-on tests skipped: no Python 3.13 environment")

test-addon: venv venv-blender venv-blender313 addon
	scripts/side-by-side.sh $(ADDON_RUNS)

# The backend's suites and the add-on's run side by side (scripts/side-by-side.sh says why).
test: venv venv-blender venv-blender313 addon lint gltf-validator node-client
	scripts/side-by-side.sh "$(PYTEST) tests/protocol tests/backend tests/e2e tests/test_*.py -q" $(ADDON_RUNS)

# Every test not marked slow: the protocol and backend suites, then the add-on inside Blender 5.0 (within
# 5 minutes on two cores). `make test` runs these and the slow ones.
test-fast: venv venv-blender addon gltf-validator
	$(PYTEST) tests/protocol tests/backend tests/test_*.py -q -m "not slow"
	scripts/test-addon.sh $(BVENV) -m "not slow"

demo: venv venv-blender addon
	$(VENV)/bin/python scripts/demo.py --prompt "$(PROMPT)" --preset "$(PRESET)" --blender-python $(BVENV)/bin/python

# Retrain the micro priors that ship in backend/micro/weights (about 50 minutes on two CPU cores; seeded).
micro-priors: venv
	$(VENV)/bin/python -m dreampolish.backend.micro.train --out backend/micro/weights

bench: venv venv-blender addon
	bench/run_cpu.sh

clean:
	rm -rf build dist out .cache
