# Two commands do all the set-up on a fresh machine:
#   make demo   - install, train a short run on Fashion-MNIST, export the bundle, write sample grids
#   make test   - install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
FASHION_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-isa lint clean protogen

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[train,test]'
	touch $@

# Fashion-MNIST ships with Debian (package dataset-fashion-mnist, MIT licence).
data:
	@test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || \
	  { echo "installing dataset-fashion-mnist (Debian package)"; \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) sh -c 'apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist'; }

# The demo ends by printing how to open the page at / of coop-serve --http-port; `make demo SERVE=1` (or
# SERVE=1 make demo) then keeps that server up, the page at http://127.0.0.1:8000/, until Ctrl-C.
demo: setup data
	SERVE="$(SERVE)" bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q

# The numerical tests again with PyTorch and oneDNN held to AVX2: other kernels add the same sums in other
# orders, so a tolerance that holds by the luck of one CPU's rounding fails here, not on a user's CPU.
# (The caps reach torch only; ONNX Runtime's MLAS picks its kernels alone.)
NUMERICAL_TESTS := tests/trainer/test_nets.py tests/trainer/test_export.py tests/trainer/test_coop.py \
	tests/contract/test_reference.py tests/contract/test_legacy_bundle.py
test-isa: setup
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q $(NUMERICAL_TESTS)

lint: setup
	$(VENV)/bin/ruff check .

# The committed stubs come from one pinned generator (protos/protogen.py says why), in a venv of its own.
protogen:
	test -x $(VENV)-protogen/bin/python || python3 -m venv $(VENV)-protogen
	$(VENV)-protogen/bin/pip install -q grpcio-tools==$$($(PY) protos/protogen.py --print-generator)
	$(VENV)-protogen/bin/python protos/protogen.py

clean:
	rm -rf runs
